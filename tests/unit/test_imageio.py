"""Tests for zsdeploy.runtime.imageio: detectron2-equivalent loading, clear errors, lossless atomic writes."""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from zsdeploy.runtime import imageio
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.files import write_json_atomic
from zsdeploy.runtime.imageio import (
    id_to_rgb,
    list_images,
    load_image,
    read_png,
    rgb_to_id,
    save_png,
)


def _rand(shape: tuple[int, ...], seed: int = 0, dtype: type = np.uint8, hi: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, hi, shape).astype(dtype)


def _load_quiet(path: Path) -> imageio.LoadedImage:
    # The API promises notes instead of warnings: any warning fails the test.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_image(path)


# ------------------------------------------------------------------------------------------ good files


def test_rgb_png_roundtrip_not_flagged(tmp_path: Path) -> None:
    a = _rand((17, 23, 3))
    Image.fromarray(a).save(tmp_path / "a.png")
    li = _load_quiet(tmp_path / "a.png")
    assert li.rgb.dtype == np.uint8 and li.rgb.shape == (17, 23, 3)
    assert np.array_equal(li.rgb, a)
    assert li.original_mode == "RGB" and li.converted is False and li.notes == []
    assert li.path == tmp_path / "a.png" and li.hw == (17, 23) and li.exif_orientation is None
    assert li.rgb.flags.writeable and li.rgb.flags.c_contiguous


def test_greyscale_L_converted_and_flagged(tmp_path: Path) -> None:
    g = _rand((9, 11))
    Image.fromarray(g).save(tmp_path / "g.png")
    li = _load_quiet(tmp_path / "g.png")
    assert li.original_mode == "L" and li.converted is True
    assert np.array_equal(li.rgb, np.repeat(g[..., None], 3, axis=2))
    assert li.notes == [f"note: {tmp_path / 'g.png'} is a greyscale (L) image; converted to RGB as detectron2 does"]


def test_rgba_alpha_dropped_not_composited(tmp_path: Path) -> None:
    a = _rand((8, 10, 4), seed=1)
    a[..., 3] = 0  # fully transparent: a compositing loader would return the background colour instead
    Image.fromarray(a).save(tmp_path / "a.png")
    li = _load_quiet(tmp_path / "a.png")
    assert li.original_mode == "RGBA" and li.converted
    assert np.array_equal(li.rgb, a[..., :3])
    assert len(li.notes) == 1 and "RGBA" in li.notes[0] and "alpha dropped" in li.notes[0]


def test_16bit_png_clips_like_pil_and_says_so(tmp_path: Path) -> None:
    v = np.array([[0, 100, 255, 256], [1000, 65535, 7, 300]], np.uint16)
    Image.fromarray(v).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    li = _load_quiet(tmp_path / "d.png")
    assert li.converted and li.original_mode.startswith("I")
    expect = np.clip(v, 0, 255).astype(np.uint8)
    assert np.array_equal(li.rgb, np.repeat(expect[..., None], 3, axis=2))
    (note,) = li.notes
    assert "16-bit" in note and "clips values above 255" in note
    assert "max value 65535" in note and "50.0% of pixels clipped" in note  # 4 of 8 values > 255


def _save_mode(path: Path, mode: str) -> None:
    base = Image.fromarray(_rand((12, 14, 3), seed=3))
    if mode == "P":
        im = base.quantize(16)
        im.save(path, transparency=0)  # palette + tRNS: PIL warns on some conversions of this
    elif mode == "CMYK":
        base.convert("CMYK").save(path)
    elif mode == "LA":
        base.convert("LA").save(path)
    elif mode == "1":
        base.convert("1").save(path)
    else:
        raise AssertionError(mode)


@pytest.mark.parametrize("mode,ext", [("P", ".png"), ("CMYK", ".tif"), ("LA", ".png"), ("1", ".png")])
def test_other_modes_equal_pil_convert(tmp_path: Path, mode: str, ext: str) -> None:
    p = tmp_path / f"x{ext}"
    _save_mode(p, mode)
    li = _load_quiet(p)
    with Image.open(p) as im:
        assert im.mode == mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = np.asarray(im.convert("RGB"))
    assert li.original_mode == mode and li.converted and len(li.notes) == 1
    assert f"({mode})" in li.notes[0]
    assert np.array_equal(li.rgb, ref)


# EXIF orientation -> what the upright image is, written with numpy (independent of PIL's transposes).
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # stored rotated 90° counter-clockwise -> turn clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(_ORIENT))
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    a = _rand((5, 8, 3), seed=orientation)
    exif = Image.Exif()
    exif[274] = orientation
    p = tmp_path / "o.png"
    Image.fromarray(a).save(p, exif=exif)
    li = _load_quiet(p)
    assert li.exif_orientation == orientation
    assert np.array_equal(li.rgb, _ORIENT[orientation](a))
    assert (len(li.notes) == 1) == (orientation != 1)  # orientation 1 is upright: nothing to say
    with Image.open(p) as im:  # and agrees with PIL's own implementation
        assert np.array_equal(li.rgb, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))


def test_exif_orientation_jpeg(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[274] = 6
    p = tmp_path / "photo.jpg"
    Image.fromarray(_rand((30, 50, 3))).save(p, exif=exif, quality=95)
    li = _load_quiet(p)
    assert li.rgb.shape == (50, 30, 3) and li.hw == (50, 30)
    with Image.open(p) as im:
        assert np.array_equal(li.rgb, np.asarray(ImageOps.exif_transpose(im)))
    assert "EXIF orientation 6" in li.notes[0] and "30x50" in li.notes[0]


# ------------------------------------------------------------------------------------------- bad files


def _assert_zsd(excinfo: pytest.ExceptionInfo[ZsdError], *needles: str) -> None:
    e = excinfo.value
    assert e.fix, "every user error must say how to fix it"
    for n in needles:
        assert n in e.problem, (n, e.problem)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_text("this is not a jpeg\n")
    with pytest.raises(ZsdError) as ei:
        load_image(p)
    _assert_zsd(ei, str(p), "could not be read as an image", "not an image format")


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_truncated_file(tmp_path: Path, fmt: str, ext: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(_rand((120, 90, 3))).save(buf, fmt)
    data = buf.getvalue()
    p = tmp_path / f"t{ext}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ZsdError) as ei:
        load_image(p)
    _assert_zsd(ei, str(p), "truncated")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "e.png"
    p.write_bytes(b"")
    with pytest.raises(ZsdError) as ei:
        load_image(p)
    _assert_zsd(ei, "empty file (0 bytes)")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ZsdError) as ei:
        load_image(tmp_path / "nope.png")
    _assert_zsd(ei, "does not exist")
    with pytest.raises(ZsdError) as ei:
        load_image(tmp_path)
    _assert_zsd(ei, "is a directory")


def test_too_large_checked_before_decoding(tmp_path: Path) -> None:
    Image.fromarray(_rand((20, 30, 3))).save(tmp_path / "a.png")
    with pytest.raises(ZsdError) as ei:
        load_image(tmp_path / "a.png", max_pixels=599)
    _assert_zsd(ei, "too large", "30x20")
    assert load_image(tmp_path / "a.png", max_pixels=600).hw == (20, 30)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


@pytest.mark.parametrize("side", [10_000, 20_000])  # 100 MP (our limit) and 400 MP (PIL's bomb error)
def test_decompression_bomb_header(tmp_path: Path, side: int) -> None:
    # A tiny file claiming a huge image: must be refused from the header, never allocated.
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side + 1, 8, 2, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")
    p = tmp_path / "bomb.png"
    p.write_bytes(png)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ZsdError) as ei:
            load_image(p)
    _assert_zsd(ei, "too large", "100 MP")


def test_zero_sized_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No common format lets PIL open a 0-pixel image, so feed one in through Image.open.
    p = tmp_path / "z.png"
    p.write_bytes(b"x")
    monkeypatch.setattr(imageio.Image, "open", lambda _p: Image.new("RGB", (0, 7)))
    with pytest.raises(ZsdError) as ei:
        load_image(p)
    _assert_zsd(ei, "zero-sized image (0x7 pixels)")


# ----------------------------------------------------------------------------------------- list_images


def test_list_images_directory(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "c.jpeg", "d.webp", "e.tiff", "f.tif", "g.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.jpg").write_bytes(b"x")  # macOS resource fork: not an image
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "h.png").write_bytes(b"x")  # not recursive
    (tmp_path / "dir.png").mkdir()  # a directory with an image name is not an image
    got = [p.name for p in list_images(tmp_path)]
    assert got == ["a.JPG", "b.png", "c.jpeg", "d.webp", "e.tiff", "f.tif", "g.bmp"]


def test_list_images_file_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "anything.dat"
    f.write_bytes(b"x")
    assert list_images(f) == [f]
    with pytest.raises(ZsdError) as ei:
        list_images(tmp_path / "missing")
    _assert_zsd(ei, "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ZsdError) as ei:
        list_images(empty)
    _assert_zsd(ei, "contains no images", "0 other file(s) and 0 sub-directories")
    (empty / "readme.txt").write_text("x")
    (empty / "nested").mkdir()
    with pytest.raises(ZsdError) as ei:
        list_images(empty)
    _assert_zsd(ei, "1 other file(s) and 1 sub-directory", "not recursive")


# ---------------------------------------------------------------------------------------------- writing


def _no_temp_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "arr,enc",
    [
        (_rand((6, 7)), "L"),
        (_rand((6, 7, 3)), "RGB"),
        (_rand((6, 7, 4)), "RGBA"),
        (_rand((6, 7), dtype=np.uint16, hi=65536), "I;16"),
    ],
)
def test_save_png_lossless(tmp_path: Path, arr: np.ndarray, enc: str) -> None:
    p = tmp_path / "sub" / "o.png"  # parent directories are created
    assert save_png(p, arr) == enc
    back = read_png(p)
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == enc
    assert _no_temp_files(p.parent)


def test_save_png_id_maps(tmp_path: Path) -> None:
    small = _rand((5, 9), dtype=np.int32, hi=65536)
    small[0, 0] = 65535
    assert save_png(tmp_path / "s.png", small) == "I;16"
    assert np.array_equal(read_png(tmp_path / "s.png").astype(np.int32), small)

    big = small.copy()
    big[1, 1] = 65536  # one id past 16 bits switches the whole map to the COCO RGB encoding
    big[2, 2] = 256**3 - 1
    assert save_png(tmp_path / "b.png", big) == "RGB-id"
    raw = read_png(tmp_path / "b.png")
    assert raw.dtype == np.uint8 and raw.shape == (5, 9, 3)
    assert np.array_equal(rgb_to_id(raw), big)
    assert raw[1, 1].tolist() == [0, 0, 1]  # 65536 = 256**2 * B
    assert raw[2, 2].tolist() == [255, 255, 255]

    assert save_png(tmp_path / "c.png", small, id_encoding="rgb") == "RGB-id"  # forced COCO panoptic format
    assert np.array_equal(rgb_to_id(read_png(tmp_path / "c.png")), small)
    assert np.array_equal(rgb_to_id(id_to_rgb(np.array([[0, 1, 256, 65536 + 2]]))), [[0, 1, 256, 65538]])


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 4), np.float32),
        np.zeros((4, 4), bool),
        np.full((4, 4), -1, np.int32),
        np.full((4, 4), 256**3, np.int64),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4, 3), np.int32),
        np.zeros((0, 4), np.uint8),
    ],
)
def test_save_png_rejects_lossy_or_invalid(tmp_path: Path, arr: np.ndarray) -> None:
    with pytest.raises(ValueError):
        save_png(tmp_path / "x.png", arr)
    assert list(tmp_path.iterdir()) == []  # nothing created, not even a temp file


def test_save_png_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "o.png"
    old = _rand((4, 4, 3))
    save_png(p, old)

    def broken_save(self: Image.Image, fp: object, *a: object, **k: object) -> None:
        fp.write(b"\x89PNG partial")  # type: ignore[attr-defined]
        raise RuntimeError("disk exploded mid-write")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(RuntimeError, match="mid-write"):
        save_png(p, _rand((4, 4, 3), seed=9))
    monkeypatch.undo()
    assert np.array_equal(read_png(p), old)  # the old file is intact
    assert sorted(x.name for x in tmp_path.iterdir()) == ["o.png"]  # and no temp file is left


def test_save_png_oserror_becomes_zsd_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "replace", full_disk)
    with pytest.raises(ZsdError) as ei:
        save_png(tmp_path / "o.png", _rand((3, 3)))
    _assert_zsd(ei, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_written_file_mode_follows_umask(tmp_path: Path) -> None:
    um = os.umask(0o022)
    os.umask(um)
    save_png(tmp_path / "o.png", _rand((2, 2)))
    assert (tmp_path / "o.png").stat().st_mode & 0o777 == 0o666 & ~um  # not mkstemp's 0600


def test_write_json_atomic(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    obj = {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(3), "d": tmp_path, "e": np.bool_(True), "ü": "ö"}
    assert write_json_atomic(p, obj) == p
    expect = {"a": 3, "b": 0.5, "c": [0, 1, 2], "d": str(tmp_path), "e": True, "ü": "ö"}
    assert json.loads(p.read_text("utf-8")) == expect
    before = p.read_bytes()
    with pytest.raises(ValueError):
        write_json_atomic(p, {"x": float("nan")})  # invalid JSON: refused, target untouched
    with pytest.raises(TypeError):
        write_json_atomic(p, {"x": object()})
    assert p.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]
    write_json_atomic(p, {"x": float("nan")}, allow_nan=True)
    assert "NaN" in p.read_text()


def test_write_to_directory_path_is_user_error(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ZsdError) as ei:
        write_json_atomic(tmp_path / "d.json", {})
    _assert_zsd(ei, "is a directory")
