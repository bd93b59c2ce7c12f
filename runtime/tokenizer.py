"""CLIP's byte-level BPE tokenizer, re-implemented without ftfy/regex (pure Python + numpy, no torch).

Behaviour (as OpenAI's `simple_tokenizer` + `clip.tokenize`): clean the text (see `basic_clean`), collapse
whitespace, lower-case, split into pre-tokens (contractions 's 't 're 've 'm 'll 'd; runs of letters; single
digits/numbers; runs of other non-space characters), map each pre-token's UTF-8 bytes to printable characters,
apply the BPE merges (the last symbol carries the end-of-word marker `</w>`), look the symbols up in the 49408-entry
vocabulary, and wrap the ids in <|startoftext|> (49406) ... <|endoftext|> (49407), zero-padded to 77. A text
longer than 77 tokens is an error (never silently truncated).

The merge list (`bpe_simple_vocab_16e6.txt.gz`) is data that zsdeploy does not ship; `find_bpe_vocab` looks for it
(explicit path, `$ZSD_CLIP_BPE`, or a copy inside an installed `open_clip` / `clip` package).

Cleaning differs from ftfy only where ftfy repairs mojibake (text decoded with the wrong codec); names typed by
a user or read from UTF-8 files do not contain any.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
import os
import re
import unicodedata
from functools import cache
from itertools import pairwise
from pathlib import Path

import numpy as np

from .errors import ZsdError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_ENV = "ZSD_CLIP_BPE"
SOT_TOKEN = 49406
EOT_TOKEN = 49407
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
_N_MERGES = 49152 - 256 - 2  # merges used by CLIP: lines 1..48894 of the file
_SPECIALS = ("<|startoftext|>", "<|endoftext|>")

# Unicode White_Space (what `\s` matches in CLIP's `regex` patterns).
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")

# ftfy.fix_text's default fixes that apply to text that is not mojibake, re-implemented (same tables).
_LIGATURES = {
    "\u0132": "IJ", "\u0133": "ij", "\u0149": "\u02bcn", "\u01f1": "DZ", "\u01f2": "Dz", "\u01f3": "dz",
    "\u01c4": "D\u017d", "\u01c5": "D\u017e", "\u01c6": "d\u017e", "\u01c7": "LJ", "\u01c8": "Lj",
    "\u01c9": "lj", "\u01ca": "NJ", "\u01cb": "Nj", "\u01cc": "nj", "\ufb00": "ff", "\ufb01": "fi",
    "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "\u017ft", "\ufb06": "st",
}
_WIDTH = {0x3000: " "}
_WIDTH.update({i: unicodedata.normalize("NFKC", chr(i)) for i in range(0xFF01, 0xFFF0)
               if unicodedata.normalize("NFKC", chr(i)) != chr(i)})
_CONTROL = {i: None for i in (*range(0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
                               *range(0xFFF9, 0xFFFD))}
_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ANSI = re.compile("\x1b\\[((?:\\d|;)*)([a-zA-Z])")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _c1_to_cp1252(m: re.Match) -> str:
    """C1 control characters read as their Windows-1252 characters (undefined bytes stay as they are)."""
    b = m.group(0).encode("latin-1")
    try:
        return b.decode("cp1252")
    except UnicodeDecodeError:
        return m.group(0)


def _unescape_entity(m: re.Match) -> str:
    out = html.unescape(m.group(0))
    return out if out != m.group(0) else m.group(0)


def _ftfy_like(text: str) -> str:
    """ftfy.fix_text (defaults) minus its mojibake repair: HTML entities with ';' (only when the text has no '<'),
    C1 controls as Windows-1252, Latin ligatures, half/full-width forms, curly quotes, line breaks, lone
    surrogates, ANSI escapes, control characters, NFC; repeated until nothing changes."""
    unescape = "<" not in text
    while True:
        orig = text
        if unescape:
            text = _ENTITY.sub(_unescape_entity, text)
        text = re.sub("[\x80-\x9f]", _c1_to_cp1252, text)
        text = "".join(_LIGATURES.get(c, c) for c in text)
        text = text.translate(_WIDTH)
        text = re.sub("[\u02bc\u2018-\u201b]", "'", re.sub("[\u201c-\u201f]", '"', text))
        text = (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
                .replace("\u2029", "\n").replace("\x85", "\n"))
        text = _SURROGATE.sub("\ufffd", text)
        text = _ANSI.sub("", text)
        text = text.translate(_CONTROL)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def basic_clean(text: str) -> str:
    """CLIP's basic_clean: ftfy-like fixes (see `_ftfy_like`), HTML unescaping twice, strip."""
    text = _ftfy_like(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    out, in_space = [], False
    for c in text:
        if c in _WHITESPACE:
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(c)
            in_space = False
    return "".join(out).strip(" ")


def _kind(c: str) -> str:
    if c in _WHITESPACE:
        return "s"
    cat = unicodedata.category(c)
    return "L" if cat[0] == "L" else "N" if cat[0] == "N" else "o"


def pre_tokenize(text: str) -> list[str]:
    """Split cleaned, lower-cased text the way CLIP's pattern does (first matching alternative, left to right)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "<":
            special = next((s for s in _SPECIALS if text.startswith(s, i)), None)
            if special:
                out.append(special)
                i += len(special)
                continue
        if c == "'":
            contraction = next((s for s in _CONTRACTIONS if text.startswith(s, i)), None)
            if contraction:
                out.append(contraction)
                i += len(contraction)
                continue
        kind = _kind(c)
        if kind == "s":
            i += 1
            continue
        if kind == "N":  # one number character per token
            out.append(c)
            i += 1
            continue
        j = i + 1
        while j < n and _kind(text[j]) == kind:
            j += 1
        out.append(text[i:j])
        i = j
    return out


@cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character: printable Latin-1 bytes map to themselves, the others to U+0100 onwards.

    The ORDER matters (it is the order of the first 512 vocabulary entries): printable bytes first, ascending,
    then the remaining bytes, ascending."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def find_bpe_vocab(path: str | os.PathLike | None = None) -> Path:
    """Locate CLIP's BPE merge list: `path`, else $ZSD_CLIP_BPE, else a copy shipped by an installed
    `open_clip` (open-clip-torch) or `clip` (openai-clip, clip-anytorch) package (found without importing it)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ZsdError(f"CLIP BPE vocabulary {p} does not exist.",
                           f"pass the path of {BPE_FILENAME} (OpenAI CLIP's tokenizer merge list).")
        return p
    env = os.environ.get(BPE_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise ZsdError(f"${BPE_ENV}={env} does not name an existing file.",
                           f"point ${BPE_ENV} at {BPE_FILENAME} (OpenAI CLIP's tokenizer merge list).")
        return p
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for root in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(root) / BPE_FILENAME
            if candidate.is_file():
                return candidate
    raise ZsdError(
        f"CLIP's BPE vocabulary ({BPE_FILENAME}) was not found; zsdeploy does not ship it.",
        f"pass its path (--clip-bpe FILE), set ${BPE_ENV}=/path/to/{BPE_FILENAME}, or `pip install open-clip-torch` "
        "(which ships the file; zsdeploy only reads it).")


class ClipTokenizer:
    """`encode(text)` -> BPE ids; `tokenize(texts)` -> int64 [N, 77] with SOT/EOT, zero-padded."""

    def __init__(self, bpe_path: str | os.PathLike | None = None) -> None:
        path = find_bpe_vocab(bpe_path)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ZsdError(f"{path} is not a readable gzip text file ({e}).",
                           f"pass OpenAI CLIP's {BPE_FILENAME} (re-download it if it is truncated).") from None
        merges = [tuple(line.split()) for line in lines[1:_N_MERGES + 1]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise ZsdError(f"{path} does not hold CLIP's {_N_MERGES} BPE merges (found {len(merges)} lines, "
                           "or lines that are not symbol pairs).", f"pass OpenAI CLIP's {BPE_FILENAME}.")
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + list(_SPECIALS)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        if len(self.encoder) != VOCAB_SIZE or self.encoder[_SPECIALS[0]] != SOT_TOKEN:
            raise ZsdError(f"{path} yields a vocabulary of {len(self.encoder)} entries, not CLIP's {VOCAB_SIZE}.",
                           f"pass OpenAI CLIP's {BPE_FILENAME}.")
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: r for r, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.path = path
        self._cache: dict[str, list[str]] = {}

    def bpe(self, token: str) -> list[str]:
        """BPE symbols of one pre-token (already byte-mapped); the last symbol ends with `</w>`."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self.bpe_ranks.get(pair, -1), pair) for pair in pairwise(word)]
            ranked = [(r, p) for r, p in ranked if r >= 0]
            if not ranked:
                break
            _, (first, second) = min(ranked)
            merged, i = [], 0
            while i < len(word):  # merge every occurrence, left to right, without overlaps
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        cleaned = whitespace_clean(basic_clean(text)).lower()
        ids: list[int] = []
        for piece in pre_tokenize(cleaned):
            if piece in _SPECIALS:
                raise ZsdError(f"the text {text!r} contains the reserved token {piece}.",
                               "remove <|startoftext|> / <|endoftext|> from class names and prompts.")
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(mapped))
        return ids

    def decode(self, ids) -> str:
        """Text of BPE ids (lower-cased, cleaned; `</w>` becomes a space). Special tokens are kept verbatim."""
        symbols = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in symbols)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def tokenize(self, texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """int64 [N, context_length]: SOT, ids, EOT, zeros. Raises ZsdError for a text longer than the context."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [SOT_TOKEN, *self.encode(text), EOT_TOKEN]
            if len(ids) > context_length:
                raise ZsdError(
                    f"the text {text!r} is {len(ids)} tokens long (with start/end tokens); CLIP reads at most "
                    f"{context_length}.", "shorten the class name (or the prompt template).")
            out[row, :len(ids)] = ids
        return out
