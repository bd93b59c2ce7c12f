"""Image loading and lossless, atomic writing of result maps.

`load_image` reads a file the way detectron2's `read_image(path, format="RGB")` does (PIL decode, EXIF
orientation, `convert("RGB")`), so that an image fed to an exported model is pixel-for-pixel the image upstream
would have seen. Unlike upstream it fails with a `ZsdError` that says what to do for every bad file, and it
reports (instead of hiding) mode conversions so a CLI can tell the user about them.

No torch here: this module is part of the runtime.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ZsdError
from .files import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "LoadedImage",
    "load_image",
    "list_images",
    "save_png",
    "read_png",
    "id_to_rgb",
    "rgb_to_id",
]

#: Extensions `list_images` picks up in a directory (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: Default pixel limit of `load_image` (100 megapixels). PIL's own bomb guard warns at ~89 MP and refuses at
#: ~179 MP; we apply one clear limit of our own instead, before any pixel is decoded.
MAX_PIXELS: int = 100_000_000

_EXIF_ORIENTATION_TAG = 274

# EXIF orientation value -> the PIL transpose that undoes it (the EXIF 2.3 definitions; the same table
# detectron2 applies, which ImageOps.exif_transpose also implements).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# What PIL's convert("RGB") does to each source mode, phrased for a one-line user note.
_MODE_NOTES = {
    "1": "a 1-bit black-and-white (1) image; converted to RGB as detectron2 does",
    "L": "a greyscale (L) image; converted to RGB as detectron2 does",
    "LA": "a greyscale image with alpha (LA); converted to RGB as detectron2 does (alpha dropped, "
    "not composited: transparent areas show whatever grey is stored under them)",
    "La": "a greyscale image with premultiplied alpha (La); converted to RGB as detectron2 does (alpha dropped)",
    "P": "a palette (P) image; converted to RGB as detectron2 does",
    "PA": "a palette image with alpha (PA); converted to RGB as detectron2 does (alpha dropped)",
    "RGBA": "an RGB image with transparency (RGBA); converted to RGB as detectron2 does (alpha dropped, "
    "not composited: transparent areas show whatever colour is stored under them)",
    "RGBa": "an RGB image with premultiplied alpha (RGBa); converted to RGB as detectron2 does (alpha dropped)",
    "RGBX": "a padded RGB (RGBX) image; converted to RGB as detectron2 does (padding byte dropped)",
    "CMYK": "a print-colour (CMYK) image; converted to RGB as detectron2 does (PIL's plain CMYK formula, "
    "no colour profile: colours may differ from what an image viewer shows)",
    "YCbCr": "a luma/chroma (YCbCr) image; converted to RGB as detectron2 does",
    "LAB": "a CIELAB (LAB) image; converted to RGB as detectron2 does",
    "HSV": "a hue/saturation/value (HSV) image; converted to RGB as detectron2 does",
}

# Modes whose samples are wider than 8 bits: PIL's convert("RGB") clips them to 0..255 (it does not rescale),
# which is what upstream does too, but it usually turns a 16-bit photo or depth map white.
_WIDE_MODES = ("I", "F")


@dataclass
class LoadedImage:
    """An image as the model sees it, plus what loading had to do to it.

    Fields:
        rgb: uint8 array (H, W, 3), RGB, C-contiguous, EXIF orientation applied.
        path: the file it came from.
        original_mode: PIL mode of the file ("RGB", "L", "RGBA", "I;16", ...).
        converted: True when `original_mode` was not RGB and `convert("RGB")` changed the representation.
        exif_orientation: the EXIF orientation tag (1..8) when the file had one, else None.
        notes: one-line, user-facing remarks (mode conversion, clipping, EXIF rotation); empty for a plain RGB file.
    """

    rgb: np.ndarray
    path: Path
    original_mode: str
    converted: bool
    exif_orientation: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) after EXIF orientation."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def _exif_orientation(im: Image.Image) -> int | None:
    # Like detectron2: any failure to read EXIF means "no orientation" (corrupt EXIF blocks are common and
    # must not make an otherwise decodable photo unreadable).
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - PIL raises many types for malformed EXIF
        return None
    if exif is None:
        return None
    value = exif.get(_EXIF_ORIENTATION_TAG)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _unreadable(path: Path, why: str) -> ZsdError:
    return ZsdError(
        f"{path} could not be read as an image: {why}.",
        "check that the file is a complete JPEG/PNG/BMP/WebP/TIFF image (re-download or re-export it); "
        "a file that only has an image extension but other content cannot be used.",
    )


def load_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read an image file as uint8 RGB, like detectron2's `read_image(path, format="RGB")`.

    Steps: PIL open, full decode (so truncated files fail here, not later), EXIF orientation, then PIL's
    `convert("RGB")` for any non-RGB mode. Conversions are reported in `notes`, never as warnings.

    Raises:
        ZsdError: missing file, a directory, an empty/non-image/truncated/corrupt file, a zero-sized image,
            or an image over `max_pixels` pixels.
    """
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            try:
                p.resolve(strict=True)
                why = f"points to {os.readlink(p)}, which does not exist"
            except RuntimeError:  # Python 3.11 raises RuntimeError for a symlink loop
                why = "loops (it leads back to itself)"
            except OSError as e:
                why = ("loops (it leads back to itself)" if e.errno == errno.ELOOP
                       else f"points to {os.readlink(p)}, which does not exist")
            raise ZsdError(f"image file {p} is a symbolic link that {why}.", "fix or remove the link.")
        raise ZsdError(f"image file {p} does not exist.", "check the path (and the current directory).")
    if p.is_dir():
        raise ZsdError(
            f"{p} is a directory, not an image file.",
            "pass an image file, or use list_images() / the CLI's directory input to process every image in it.",
        )
    try:
        nbytes = p.stat().st_size
    except OSError as e:
        raise ZsdError(f"cannot access {p}: {e.strerror or e}.", "check the file's permissions.") from e
    if nbytes == 0:
        raise ZsdError(f"{p} is an empty file (0 bytes), not an image.", "re-copy or re-download the image.")

    try:
        # PIL's own DecompressionBombWarning would fire between its limit and ours; our explicit check below
        # is the one place that decides, so silence PIL's duplicate warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ZsdError(
                        f"{p} is a zero-sized image ({w}x{h} pixels).", "use an image with at least one pixel."
                    )
                if w * h > max_pixels:
                    raise _too_large(p, w, h, max_pixels)
                mode = im.mode
                # PIL decodes lazily: force the full decode so a truncated file fails here with a clear message,
                # not somewhere downstream. (Code that sets PIL's global ImageFile.LOAD_TRUNCATED_IMAGES makes
                # PIL fill the missing part instead; that global is left alone here.)
                im.load()
                orientation = _exif_orientation(im)
                method = _EXIF_TRANSPOSE.get(orientation) if orientation is not None else None
                oriented = im.transpose(method) if method is not None else im
                rgb_img = oriented if oriented.mode == "RGB" else oriented.convert("RGB")
                # np.array (not asarray) so the result owns writable memory independent of PIL.
                rgb = np.array(rgb_img, dtype=np.uint8, copy=True)
                wide_stats = _wide_mode_stats(oriented) if mode.startswith(_WIDE_MODES) else None
    except ZsdError:
        raise
    except Image.DecompressionBombError as e:
        # PIL refuses at 2 * Image.MAX_IMAGE_PIXELS from the header alone, before our own check can run.
        raise _too_large(p, None, None, min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))) from e
    except UnidentifiedImageError as e:
        raise _unreadable(p, "it is not an image format PIL recognises (wrong content or unsupported format)") from e
    except PermissionError as e:
        raise ZsdError(f"permission denied reading {p}.", "check the file's permissions.") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, MemoryError) as e:
        # PIL reports truncation as OSError("image file is truncated ...") and corrupt chunks as SyntaxError,
        # ValueError or zlib/struct errors depending on the format.
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise _unreadable(p, f"the file is truncated ({msg})") from e
        raise _unreadable(p, f"the data is corrupt ({msg})") from e

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        # Defensive: PIL's convert("RGB") always yields HxWx3; anything else is a PIL/plugin bug.
        raise _unreadable(p, f"decoding produced an array of shape {rgb.shape}")

    notes: list[str] = []
    converted = mode != "RGB"
    if converted:
        if mode.startswith(_WIDE_MODES):
            notes.append(_wide_mode_note(p, mode, wide_stats))
        else:
            what = _MODE_NOTES.get(mode, f"an image of mode ({mode}); converted to RGB as detectron2 does")
            notes.append(f"note: {p} is {what}")
    if method is not None:
        notes.append(
            f"note: {p} has EXIF orientation {orientation}; rotated/flipped to {rgb.shape[1]}x{rgb.shape[0]} "
            "as detectron2 does (outputs are in the rotated frame)"
        )
    return LoadedImage(
        rgb=np.ascontiguousarray(rgb),
        path=p,
        original_mode=mode,
        converted=converted,
        exif_orientation=orientation,
        notes=notes,
    )


def _too_large(p: Path, w: int | None, h: int | None, max_pixels: int) -> ZsdError:
    size = f" ({w}x{h} = {w * h / 1e6:.0f} MP)" if w is not None and h is not None else ""
    return ZsdError(
        f"{p} is too large to load{size}; the limit is {max_pixels / 1e6:.0f} MP (this also guards against "
        "decompression bombs).",
        "downscale the image first (the model resizes it to ~800x1333 anyway), or raise the limit with "
        "load_image(..., max_pixels=N) if the file is trusted.",
    )


def _wide_mode_stats(im: Image.Image) -> tuple[float, float]:
    """(max sample value, fraction of pixels above 255) of a >8-bit image, to explain the clipping."""
    a = np.asarray(im)
    if a.size == 0:
        return 0.0, 0.0
    return float(a.max()), float(np.count_nonzero(a > 255)) / float(a.size)


def _wide_mode_note(p: Path, mode: str, stats: tuple[float, float] | None) -> str:
    vmax, frac = stats if stats is not None else (float("nan"), float("nan"))
    return (
        f"note: {p} is a {'16-bit' if '16' in mode else '32-bit'} ({mode}) image; converted to RGB as detectron2 "
        f"does, which clips values above 255 to white instead of rescaling (max value {vmax:g}, "
        f"{100.0 * frac:.1f}% of pixels clipped); convert it to 8-bit yourself if that is not what you want"
    )


def list_images(path: str | os.PathLike[str]) -> list[Path]:
    """The images to process for `path`: the file itself, or a directory's images.

    A directory is scanned non-recursively for `IMAGE_EXTENSIONS` (any case), sorted by file name; hidden
    files (".name", e.g. macOS "._x.jpg" resource forks that are not images) are skipped. A symbolic link with an
    image name is listed even when it is broken or loops, so that it fails as that image (reported, exit 3) instead
    of vanishing from the count. A file is returned as given, whatever its extension (`load_image` decides whether
    it is an image).

    Raises:
        ZsdError: the path does not exist, or the directory holds no image.
    """
    p = Path(path)
    if not p.exists():
        raise ZsdError(f"input {p} does not exist.", "pass an existing image file or a directory of images.")
    if not p.is_dir():
        return [p]
    try:
        entries = list(p.iterdir())
    except OSError as e:
        raise ZsdError(f"cannot list directory {p}: {e.strerror or e}.", "check the directory's permissions.") from e
    images = sorted(
        (e for e in entries if not e.name.startswith(".") and e.suffix.lower() in IMAGE_EXTENSIONS
         and (e.is_symlink() or e.is_file())),
        key=lambda e: e.name,
    )
    if not images:
        n_sub = sum(1 for e in entries if e.is_dir())
        n_other = sum(1 for e in entries if e.is_file())
        found = f"it has {n_other} other file(s) and {n_sub} sub-director{'y' if n_sub == 1 else 'ies'}"
        raise ZsdError(
            f"directory {p} contains no images ({found}; the scan is not recursive and looks for "
            f"{', '.join(IMAGE_EXTENSIONS)}).",
            "point to the directory that holds the images themselves, or convert them to one of those formats.",
        )
    return images


# --------------------------------------------------------------------------------------------- writing


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic colour encoding of an id map: R + 256*G + 256**2*B = id. Returns uint8 (H, W, 3)."""
    a = np.asarray(ids)
    if a.size and (a.min() < 0 or a.max() >= 256**3):
        raise ValueError(f"ids must be in [0, 2**24) for RGB encoding, got [{a.min()}, {a.max()}]")
    a = a.astype(np.int64)
    return np.stack([a % 256, (a // 256) % 256, a // 65536], axis=-1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Inverse of `id_to_rgb`: uint8 (H, W, 3) -> int32 (H, W) with id = R + 256*G + 256**2*B."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {a.shape}")
    a = a.astype(np.int32)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


PngEncoding = Literal["L", "RGB", "RGBA", "I;16", "RGB-id"]


def save_png(
    path: str | os.PathLike[str], array: np.ndarray, *, id_encoding: Literal["auto", "rgb"] = "auto"
) -> PngEncoding:
    """Write `array` losslessly as a PNG, atomically (temp file in the same directory + os.replace).

    Encodings:
      - uint8 (H, W) -> 8-bit greyscale "L"; uint8 (H, W, 3) -> "RGB"; uint8 (H, W, 4) -> "RGBA".
      - uint16 (H, W) -> 16-bit greyscale "I;16".
      - signed/unsigned integer id maps (e.g. int32 panoptic ids, (H, W), values >= 0): as 16-bit "I;16" when
        max < 65536 and `id_encoding="auto"`, otherwise "RGB-id": the COCO panoptic encoding
        id = R + 256*G + 256**2*B (max < 2**24). Pass `id_encoding="rgb"` to always get the COCO panoptic
        format (what panopticapi and COCO-panoptic readers expect). `read_png` + `rgb_to_id` invert both.

    Returns the encoding used ("L", "RGB", "RGBA", "I;16" or "RGB-id") so callers can record it.
    Raises ValueError for arrays that cannot be stored losslessly (floats, bools, negative or too-large ids),
    ZsdError when the location is not writable.
    """
    a = np.asarray(array)
    enc: PngEncoding
    if a.dtype == np.uint8:
        if a.ndim == 2:
            enc, img_arr = "L", a
        elif a.ndim == 3 and a.shape[2] in (3, 4):
            enc, img_arr = ("RGB" if a.shape[2] == 3 else "RGBA"), a
        else:
            raise ValueError(f"uint8 arrays must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    elif a.dtype.kind in "iu" and a.dtype != np.bool_:
        if a.ndim != 2:
            raise ValueError(f"{a.dtype} arrays must be 2-D id/label maps; got shape {a.shape}")
        lo = int(a.min()) if a.size else 0
        hi = int(a.max()) if a.size else 0
        if lo < 0:
            raise ValueError(f"cannot store negative values ({lo}) in a PNG; map them to non-negative ids first")
        if id_encoding not in ("auto", "rgb"):
            raise ValueError(f"id_encoding must be 'auto' or 'rgb', got {id_encoding!r}")
        if id_encoding == "auto" and hi < 65536:
            enc, img_arr = "I;16", a.astype(np.uint16)
        elif hi < 256**3:
            enc, img_arr = "RGB-id", id_to_rgb(a)
        else:
            raise ValueError(f"ids up to {hi} do not fit the 24-bit RGB panoptic encoding (max {256**3 - 1})")
    else:
        raise ValueError(
            f"save_png stores uint8 images and integer id maps losslessly; got dtype {a.dtype} "
            "(convert bool masks to uint8 and quantise floats explicitly)"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"cannot write an empty image of shape {a.shape}")
    img_arr = np.ascontiguousarray(img_arr)
    # Build the PIL image before opening the temp file so a conversion error never creates one.
    pil = Image.fromarray(img_arr)
    if enc == "I;16" and pil.mode != "I;16":  # defensive against PIL changing fromarray's uint16 mapping
        raise RuntimeError(f"PIL mapped a uint16 array to mode {pil.mode}, expected I;16")

    def _write(f: io.BufferedWriter) -> None:
        pil.save(f, format="PNG")

    atomic_write(path, _write)
    return enc


def read_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG back without conversion: uint8 (H, W[, C]) or uint16 (H, W) for 16-bit greyscale.

    The counterpart of `save_png` (an "RGB-id" file comes back as uint8 (H, W, 3); apply `rgb_to_id`).
    """
    p = Path(path)
    if not p.is_file():
        raise ZsdError(f"PNG file {p} does not exist.", "check the path.")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.array(im).astype(np.uint16) if im.mode == "I" else np.array(im, dtype=np.uint16)
            else:
                a = np.array(im)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise _unreadable(p, str(e) or type(e).__name__) from e
    return a
