"""CLIP BPE tokenizer: exact token ids (OpenAI's documented examples and ids produced by OpenAI's own
simple_tokenizer with ftfy 6.3 + regex), context handling, errors; prompt ensembles of class names."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from helpers import BPE, needs_bpe
from zsdeploy.runtime.errors import ZsdError

@pytest.fixture(scope="module")
def tok():
    from zsdeploy.runtime.tokenizer import ClipTokenizer

    return ClipTokenizer(BPE)


# Ids (without SOT/EOT) from OpenAI's simple_tokenizer (openai/CLIP@d05afc4, ftfy 6.3.1, regex 2026.11.15).
REFERENCE = [
    ('A photo of a potted plant in the scene', [320, 1125, 539, 320, 48581, 3912, 530, 518, 3562]),
    ('wall-concrete', [2569, 268, 9637]),
    ('playingfield', [47368, 1570]),
    ('tvmonitor', [3197, 10198]),
    ('diningtable', [1462, 653, 2175]),
    ('person, individual, someone, somebody, mortal, soul', [2533, 267, 8512, 267, 2100, 267, 8305, 267, 14680, 267, 3755]),
    ('c p u ', [322, 335, 340]),
    ('t-shirt', [339, 268, 2523]),
    ('hair drier', [2225, 39877]),
    ('teddy bear', [11798, 4298]),
    ("don't", [847, 713]),
    ("They'll", [889, 1342]),
    ("it's 90's music", [585, 568, 280, 271, 568, 1179]),
    ("o'clock", [334, 262, 6716]),
    ("rock'n'roll", [2172, 262, 333, 262, 3341]),
    ('hello, world!', [3306, 267, 1002, 256]),
    ('e.g. 3.14', [324, 269, 326, 269, 274, 269, 272, 275]),
    ('x²', [343, 41175]),
    ('12345', [272, 273, 274, 275, 276]),
    ('café au lait', [15304, 2566, 572, 585]),
    ('naïve', [1097, 35689, 563]),
    ('Straße', [1894, 127, 253, 324]),
    ('日本語', [39121, 44353, 34002, 508]),
    ('emoji 😀 test', [16327, 7334, 1628]),
    ('a\tb\nc  d', [320, 321, 322, 323]),
    ('“quoted” ‘single’', [257, 27706, 257, 568, 17005, 262]),
    ('ﬁsh', [2759]),
    ('ＦＵＬＬ', [1476]),
    ('&amp; &lt;tag&gt;', [261, 283, 3640, 285]),
    ('A&amp;B', [320, 261, 321]),
    ('Rock &amp; Roll', [2172, 261, 3341]),
    ('(parenthesis) [bracket] {brace}', [263, 3106, 10673, 264, 314, 14780, 316, 346, 9183, 348]),
    ('a---b...', [320, 11079, 321, 678]),
    ('$100 + 5%', [259, 272, 271, 271, 266, 276, 260]),
    ('#hashtag @user', [258, 9238, 287, 7031]),
    ('back\\slash/slash', [893, 315, 19749, 270, 19749]),
    ('ÀÉÎÕÜ', [36149, 3459, 48704, 127, 113, 47177]),
    ('Ωμέγα', [139, 231, 138, 120, 138, 255, 138, 111, 138, 365]),
    ('Привет', [26302, 16370, 29503, 110, 22176, 141, 480]),
    ('İstanbul', [328, 16384, 11231]),
    ('zero\ufeffbom', [14867, 19469]),
    ('non\xa0breaking', [3353, 2755]),
    ('A photo of a sports ball in the scene', [320, 1125, 539, 320, 2054, 1069, 530, 518, 3562]),
    ('itap of a building, edifice.', [529, 2728, 539, 320, 2307, 267, 8750, 69, 733, 269]),
]


@needs_bpe
def test_documented_examples(tok):
    # openai/CLIP README / notebooks: clip.tokenize(["a diagram", "a dog", "a cat"])
    ids = tok.tokenize(["a diagram", "a dog", "a cat"])
    assert ids.dtype == np.int64 and ids.shape == (3, 77)
    assert ids[:, :4].tolist() == [[49406, 320, 22697, 49407], [49406, 320, 1929, 49407], [49406, 320, 2368, 49407]]
    assert not ids[:, 4:].any()


@needs_bpe
@pytest.mark.parametrize("text,expected", REFERENCE)
def test_matches_openai_tokenizer(tok, text, expected):
    assert tok.encode(text) == expected


@needs_bpe
def test_vocabulary_structure(tok):
    assert len(tok.encoder) == 49408
    assert tok.encoder["<|startoftext|>"] == 49406 and tok.encoder["<|endoftext|>"] == 49407
    # 256 byte symbols, then the same with the end-of-word marker, printable ASCII first: "!" is 0, "a</w>" 320.
    assert tok.encoder["!"] == 0 and tok.encoder["a"] == 64 and tok.encoder["a</w>"] == 256 + 64
    # the first merge of the file is the first merged symbol
    with gzip.open(BPE, "rt", encoding="utf-8") as f:
        f.readline()
        first = f.readline().split()
    assert tok.encoder["".join(first)] == 512
    assert tok.decode(tok.encode("A photo of a Potted plant, in the scene!")) == "a photo of a potted plant , in the scene !"


@needs_bpe
def test_context_length_is_enforced_not_truncated(tok):
    body = " ".join(["dog"] * 75)  # 75 tokens + SOT + EOT = 77: fits exactly
    ids = tok.tokenize(body)
    assert ids[0, 0] == 49406 and ids[0, 76] == 49407 and (ids[0, 1:76] == 1929).all()
    with pytest.raises(ZsdError) as e:
        tok.tokenize(["cat", body + " dog"])
    assert "78 tokens" in str(e.value) and "at most 77" in str(e.value)


@needs_bpe
def test_reserved_tokens_rejected(tok):
    with pytest.raises(ZsdError, match="reserved"):
        tok.encode("a <|endoftext|> b")


def test_missing_and_corrupt_vocabulary(tmp_path, monkeypatch):
    from zsdeploy.runtime.tokenizer import ClipTokenizer, find_bpe_vocab

    monkeypatch.setenv("ZSD_CLIP_BPE", str(tmp_path / "nope.txt.gz"))
    with pytest.raises(ZsdError, match="ZSD_CLIP_BPE"):
        find_bpe_vocab()
    with pytest.raises(ZsdError, match="does not exist"):
        ClipTokenizer(tmp_path / "missing.txt.gz")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ZsdError, match="gzip"):
        ClipTokenizer(bad)
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as f:
        f.write("#version\na b\n")
    with pytest.raises(ZsdError, match="48894"):
        ClipTokenizer(short)


def test_prompts_and_synonyms():
    from zsdeploy.runtime.prompts import (
        TEMPLATE_SETS,
        prompts_for_class,
        templates_for,
    )

    assert {k: len(v) for k, v in TEMPLATE_SETS.items()} == {"single": 1, "imagenet_select": 8, "imagenet": 80,
                                                             "clip": 32}
    assert TEMPLATE_SETS["single"] == ("A photo of a {} in the scene",)
    assert TEMPLATE_SETS["imagenet_select"][-1] == "A photo of a {} in the scene"
    two = ("a {}.", "the {}!")
    assert prompts_for_class("building, edifice", two) == ["a building.", "a edifice.", "the building!",
                                                            "the edifice!"]
    assert prompts_for_class("c p u ", two) == ["a c p u .", "the c p u !"]
    assert prompts_for_class("a,b", two) == ["a a,b.", "the a,b!"]  # only ", " separates synonyms
    with pytest.raises(ZsdError):
        templates_for("nope")
    with pytest.raises(ZsdError):
        templates_for(["no placeholder"])


def test_vocabulary_validation():
    from zsdeploy.runtime.prompts import validate_class_names

    assert validate_class_names(["cat", "dog"]) == ["cat", "dog"]
    with pytest.raises(ZsdError, match="empty"):
        validate_class_names([])
    with pytest.raises(ZsdError, match="position"):
        validate_class_names(["cat", "  "])
    with pytest.raises(ZsdError, match="duplicate") as e:
        validate_class_names(["cat", "dog", "Cat "])
    assert "positions 0 and 2" in str(e.value)


def test_ensemble_math_and_trimming():
    """Per class: normalise each prompt embedding, average, normalise; trimming padding columns is exact for an
    encoder that (like CLIP's causal tower) reads tokens up to the end-of-text token only."""
    from zsdeploy.runtime.prompts import class_text_embeddings

    def tokenize(prompts):
        out = np.zeros((len(prompts), 77), np.int64)
        for i, p in enumerate(prompts):
            ids = [49406, *[ord(c) for c in p], 49407]
            out[i, :len(ids)] = ids
        return out

    widths = []

    def encode(ids):
        widths.append(ids.shape[1])
        eot = ids.argmax(1)
        return np.stack([np.array([np.sum(r[:e]), len(r[:e]), 1.0]) for r, e in zip(ids, eot)])

    names = ["ab", "x, yzw"]
    got = class_text_embeddings(names, ["{}", "{}!"], tokenize, encode)
    assert widths == [6]  # longest prompt "yzw!" + SOT + EOT; trimmed from 77
    full = class_text_embeddings(names, ["{}", "{}!"], tokenize, encode, trim=False)
    assert widths[-1] == 77
    np.testing.assert_allclose(got, full, rtol=1e-6)
    raw = encode(tokenize(["ab", "ab!"]))
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    mean = raw.mean(0)
    np.testing.assert_allclose(got[0], mean / np.linalg.norm(mean), rtol=1e-6)
    assert got.shape == (2, 3) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
