"""A sweep of hostile inputs through zsdeploy's console scripts, run as a person runs them (subprocesses, real files),
checked against README's promises: the documented exit code, one paragraph `error: ... Fix: ...` and no traceback,
nothing partial left in an output folder (no temporary or staging leftovers), and earlier files there untouched.

    python scripts/hostile_sweep.py [--work DIR] [--report REPORT.md] [--only KIND]

It exports a small demo PADing (64x64) once into --work, then runs every case and writes a table per kind with the
count of clean cases. Exit 0 when every case is clean, 1 otherwise (each unclean case says why). Not part of the test
suite (minutes of process starts); tests/cli/test_hostile_writes.py and the CLI tests hold the cases that must never
regress.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

PY = sys.executable
SENTINEL = "earlier_result.txt"


@dataclass
class Case:
    kind: str
    name: str
    argv: Callable[[Path], list[str]]  # work dir -> command
    setup: Callable[[Path], None] = lambda w: None
    expect: tuple[int, ...] = (2,)
    outputs: Callable[[Path], list[Path]] = lambda w: []  # folders that must hold no leftovers afterwards
    must_say: str = ""  # a phrase the message must contain (the problem named)
    env: dict[str, str] = field(default_factory=dict)


def cli(module: str, *args: str) -> list[str]:
    return [PY, "-m", module, *args]


def trt(*args: str) -> list[str]:
    return cli("zsdeploy.cli.trt_infer", *args)


def exp(*args: str) -> list[str]:
    return cli("zsdeploy.cli.export_model", *args)


def tri(*args: str) -> list[str]:
    return cli("zsdeploy.cli.export_triton", *args)


def bench(*args: str) -> list[str]:
    return cli("zsdeploy.benchmarks.cli", *args)


def eng(*args: str) -> list[str]:
    return cli("zsdeploy.cli.build_engine", *args)


def api(code: str) -> list[str]:
    return [PY, "-c", "import sys, zsdeploy\nfrom zsdeploy.runtime.errors import ZsdError\n"
                      "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) +
            "except ZsdError as e:\n    print(f'error: {e.problem} Fix: {e.fix}', file=sys.stderr); sys.exit(2)\n"
            "except (TypeError, ValueError) as e:  # the API says what it wants\n"
            "    print(f'error: {type(e).__name__}: {e} Fix: (API)', file=sys.stderr); sys.exit(4)\n"]


# ------------------------------------------------------------------------------------------------ fixtures
def png_bytes(a: np.ndarray, mode: str | None = None) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, format="PNG")
    return buf.getvalue()


def scene(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.empty((h, w, 3), np.uint8)
    a[:] = rng.integers(0, 256, 3)
    a[h // 4: h // 2, w // 4: w // 2] = rng.integers(0, 256, 3)
    return a


def folder(w: Path, name: str, files: dict[str, bytes | Callable[[Path], None]]) -> Path:
    d = w / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for fname, content in files.items():
        if callable(content):
            content(d / fname)
        else:
            (d / fname).write_bytes(content)
    return d


def out_with_sentinel(w: Path, name: str) -> Path:
    d = w / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / SENTINEL).write_text("keep me")
    return d


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header) with a tiny body."""
    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


GOOD = png_bytes(scene())


def image_cases() -> list[Case]:
    """trt-infer on folders and files holding something other than clean images."""
    cases = []
    inputs: dict[str, tuple[dict[str, bytes | Callable[[Path], None]], tuple[int, ...], str]] = {
        "zero-byte PNG among good ones": ({"a.png": GOOD, "empty.png": b""}, (3,), "empty.png"),
        "text file named .jpg": ({"a.png": GOOD, "notes.jpg": b"hello"}, (3,), "notes.jpg"),
        "PNG cut in half": ({"a.png": GOOD, "half.png": GOOD[: len(GOOD) // 2]}, (3,), "half.png"),
        "PNG with a corrupt IDAT": ({"a.png": GOOD, "bad.png": GOOD[:60] + b"\0" * 40 + GOOD[100:]}, (3,), "bad.png"),
        "bomb header 100000x100000": ({"a.png": GOOD, "bomb.png": png_header_only(100000, 100000)}, (3,), "bomb.png"),
        "1x1 image": ({"tiny.png": png_bytes(np.zeros((1, 1, 3), np.uint8))}, (0,), ""),
        "1x4000 strip": ({"strip.png": png_bytes(np.zeros((1, 4000, 3), np.uint8))}, (0, 2), ""),
        "16-bit greyscale PNG": ({"g16.png": png_bytes(np.full((64, 64), 60000, np.uint16))}, (0,), ""),
        "RGBA PNG": ({"rgba.png": png_bytes(np.dstack([scene(), np.full((64, 64), 128, np.uint8)]))}, (0,), ""),
        "palette PNG": ({"p.png": (lambda p: Image.fromarray(scene()).convert("P").save(p))}, (0,), ""),
        "CMYK JPEG": ({"c.jpg": (lambda p: Image.fromarray(scene()).convert("CMYK").save(p))}, (0,), ""),
        "greyscale JPEG": ({"l.jpg": (lambda p: Image.fromarray(scene()).convert("L").save(p))}, (0,), ""),
        "animated GIF": ({"anim.gif": (lambda p: Image.fromarray(scene()).save(
            p, save_all=True, append_images=[Image.fromarray(scene(seed=1))]))}, (0, 2), ""),
        "BMP": ({"x.bmp": (lambda p: Image.fromarray(scene()).save(p))}, (0,), ""),
        "WEBP": ({"x.webp": (lambda p: Image.fromarray(scene()).save(p))}, (0,), ""),
        "TIFF float32": ({"f.tif": (lambda p: Image.fromarray(np.ones((64, 64), np.float32)).save(p))}, (0, 2), ""),
        "EXIF-rotated JPEG": ({"r.jpg": (lambda p: _exif_rotated(p))}, (0,), ""),
        "upper-case extension": ({"A.PNG": GOOD}, (0,), ""),
        "unicode and spaces in the name": ({"straße café 1.png": GOOD}, (0,), ""),
        "name of 250 characters (outputs would exceed 255)": ({("x" * 246) + ".png": GOOD}, (2,), "too long"),
        "name of 200 characters": ({("y" * 196) + ".png": GOOD}, (0,), ""),
        "only hidden files": ({".a.png": GOOD, "._b.jpg": b"resource fork"}, (2,), "no images"),
        "folder of non-images only": ({"readme.txt": b"hi", "data.csv": b"1,2"}, (2,), "no images"),
        "directory named x.png": ({"a.png": GOOD, "x.png": (lambda p: p.mkdir())}, (0,), ""),
        "FIFO named pipe.png": ({"a.png": GOOD, "pipe.png": (lambda p: os.mkfifo(p))}, (0, 3), ""),
        "symlink to /dev/zero named z.png": ({"a.png": GOOD, "z.png": (lambda p: p.symlink_to("/dev/zero"))},
                                             (0, 3), ""),
        "symlink to a good image": ({"a.png": (lambda p: p.symlink_to(_good_file(p)))}, (0,), ""),
        "image with the wrong extension (PNG as .jpg)": ({"real_png.jpg": GOOD}, (0,), ""),
        "every image fails": ({"a.png": b"", "b.png": b"x"}, (2,), "none of the 2"),
        "same stem, two formats": ({"x.png": GOOD, "x.jpg": (lambda p: Image.fromarray(scene()).save(p))}, (0,),
                                   ""),
        "SVG": ({"v.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>"}, (2,), "no images"),
    }
    for name, (files, expect, say) in inputs.items():
        def setup(w: Path, files=files, name=name) -> None:
            folder(w, "img_" + _slug(name), files)
            out_with_sentinel(w, "out_" + _slug(name))

        cases.append(Case("trt-infer: input images", name,
                          lambda w, name=name: trt("--model", str(w / "m.onnx"), "--input",
                                                   str(w / ("img_" + _slug(name))), "--output",
                                                   str(w / ("out_" + _slug(name))), "--quiet"),
                          setup, expect, lambda w, name=name: [w / ("out_" + _slug(name))], say))
    return cases


def _good_file(link: Path) -> Path:
    target = link.parent.parent / "good_target.png"
    target.write_bytes(GOOD)
    return target


def _exif_rotated(p: Path) -> None:
    im = Image.fromarray(scene(48, 64))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(p, exif=exif)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")[:40]


def option_cases() -> list[Case]:
    """trt-infer options and output locations."""
    def run(*extra: str, input_: str = "img.png", out: str = "out_opt") -> Callable[[Path], list[str]]:
        return lambda w: trt("--model", str(w / "m.onnx"), "--input", str(w / input_), "--output", str(w / out),
                             "--quiet", *extra)

    def setup(w: Path) -> None:
        (w / "img.png").write_bytes(GOOD)
        out_with_sentinel(w, "out_opt")

    out = lambda w: [w / "out_opt"]  # noqa: E731
    cases = [Case("trt-infer: options", f"{' '.join(args)}", run(*args), setup, expect, out, say) for args, expect, say
             in [
                 (("--batch", "-1"), (2,), "--batch"), (("--batch", "abc"), (2,), ""), (("--batch", "100000"), (2,), "static batch"),
                 (("--threads", "0"), (2,), "--threads"), (("--threads", "99999"), (0,), ""),
                 (("--short-edge", "-1"), (2,), "--short-edge"), (("--short-edge", "0"), (0,), ""),
                 (("--short-edge", "100000"), (2, 3), ""), (("--task", "depth"), (2,), ""),
                 (("--task", "semantic", "--task", "instance"), (0,), ""),
                 (("--backend", "cuda"), (2,), ""), (("--backend", "tensorrt"), (2,), "TensorRT"),
                 (("--precision", "fp16"), (2,), "graph precision"), (("--precision", "BF16"), (2,), ""),
                 (("--vis-score-threshold", "2"), (2,), ""), (("--vis-score-threshold", "nan"), (2,), ""),
                 (("--every", "2"), (2,), "video"), (("--max-frames", "3"), (2,), "video"),
                 (("--classes", "cat,dog"), (2,), "ZegFormer"), (("--plugin-lib", "/nonexistent.so"), (0, 2), ""),
                 (("--vis", "--save-raw"), (0,), ""),
             ]]
    outs = {
        "--output is an existing file": (lambda w: (w / "a_file").write_text("x"), "a_file", "is a file"),
        "--output below a file": (lambda w: (w / "a_file2").write_text("x"), "a_file2/sub", "is a file"),
        "--output in /proc": (lambda w: None, "/proc/zsd_out", "not writable"),
        "--output /dev/null": (lambda w: None, "/dev/null", "not a directory"),
        "--output with a trailing slash": (lambda w: None, "out_slash/", ""),
        "--output named like the input file": (lambda w: None, "img.png", "is a file"),
    }
    for name, (prep, target, say) in outs.items():
        def setup2(w: Path, prep=prep) -> None:
            (w / "img.png").write_bytes(GOOD)
            prep(w)

        tgt = target
        cases.append(Case("trt-infer: options", name,
                           lambda w, tgt=tgt: trt("--model", str(w / "m.onnx"), "--input", str(w / "img.png"),
                                                  "--output", tgt if tgt.startswith("/") else str(w / tgt),
                                                  "--quiet"),
                           setup2, (0,) if not say else (2,), lambda w: [], say))
    cases.append(Case("trt-infer: options", "--input missing", run(input_="missing.png"), setup, (2,), out,
                      "does not exist"))
    cases.append(Case("trt-infer: options", "--input an empty folder", run(input_="empty_dir"),
                      lambda w: (setup(w), (w / "empty_dir").mkdir(exist_ok=True)), (2,), out, "no images"))
    return cases


def model_cases() -> list[Case]:
    """trt-infer --model given something other than zsdeploy's export."""
    def meta_edit(key: str, value: str | None) -> Callable[[Path], None]:
        def setup(w: Path) -> None:
            import onnx

            (w / "img.png").write_bytes(GOOD)
            m = onnx.load(str(w / "m.onnx"))
            props = {p.key: p for p in m.metadata_props}
            if value is None:
                m.metadata_props.remove(props[key])
            else:
                props[key].value = value
            onnx.save(m, str(w / f"meta_{_slug(key)}_{_slug(str(value))}.onnx"))
        return setup

    def run_model(name: str | Callable[[Path], str]) -> Callable[[Path], list[str]]:
        return lambda w: trt("--model", name(w) if callable(name) else str(w / name), "--input", str(w / "img.png"),
                             "--output", str(w / "out_model"), "--quiet")

    files: dict[str, tuple[Callable[[Path], None], str, str]] = {
        "empty .onnx": (lambda w: (w / "empty.onnx").write_bytes(b""), "empty.onnx", "is empty"),
        "text file as .onnx": (lambda w: (w / "t.onnx").write_text("hello"), "t.onnx", "not a readable ONNX"),
        "ONNX cut to 1 MiB": (lambda w: (w / "cut.onnx").write_bytes((w / "m.onnx").read_bytes()[: 2**20]),
                              "cut.onnx", ""),
        "directory named m2.onnx": (lambda w: (w / "m2.onnx").mkdir(exist_ok=True), "m2.onnx", ""),
        "a .pth given as model": (lambda w: (w / "w.pth").write_bytes(b"PK"), "w.pth", ".onnx"),
        "a .plan without its sidecar": (lambda w: (w / "e.plan").write_bytes(b"engine"), "e.plan", "sidecar"),
        "a .plan whose sidecar is garbage": (lambda w: ((w / "f.plan").write_bytes(b"x"),
                                                        (w / "f.plan.json").write_text("{")), "f.plan", "sidecar"),
        "foreign ONNX without metadata": (lambda w: _foreign_onnx(w / "foreign.onnx"), "foreign.onnx",
                                          "no zsdeploy metadata"),
        "a ZegFormer-looking folder without bundle.json": (lambda w: (w / "bundle_dir").mkdir(exist_ok=True),
                                                           "bundle_dir", "bundle"),
    }
    cases = []
    for name, (prep, target, say) in files.items():
        def setup(w: Path, prep=prep) -> None:
            (w / "img.png").write_bytes(GOOD)
            prep(w)

        cases.append(Case("trt-infer: model files", name, run_model(target), setup, (2,), lambda w: [], say))
    for key, value, say in [("num_classes", "abc", "'num_classes'"), ("num_classes", "0", ">= 1"),
                            ("class_names", "[1, 2]", "'class_names'"), ("class_names", "not json", "'class_names'"),
                            ("pixel_mean", "[1]", "'pixel_mean'"), ("dynamic", "maybe", "'dynamic'"),
                            ("min_size_test", "-5", "'min_size_test'"), ("zsdeploy_format", "zsdeploy-onnx/99", "format"),
                            ("thing_ids", "[99999]", "'thing_ids'"), ("object_mask_threshold", "high", ""),
                            ("model", None, "missing"), ("size_divisibility", "x", "'size_divisibility'"),
                            ("task", "depth", "")]:
        fname = f"meta_{_slug(key)}_{_slug(str(value))}.onnx"
        cases.append(Case("trt-infer: model files", f"metadata {key}={value!r}", run_model(fname),
                          meta_edit(key, value), (2,), lambda w: [], say))
    return cases


def _foreign_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    g = helper.make_graph([helper.make_node("Relu", ["images"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def export_cases() -> list[Case]:
    base = ("--model", "pading", "--weights", "demo")

    def run(*args: str) -> Callable[[Path], list[str]]:
        out = () if "--output" in args else ("--output", "{w}/exp_out/m.onnx")  # the default target
        return lambda w: exp(*[a.replace("{w}", str(w)) for a in (*args, *out)])

    def setup(w: Path) -> None:
        out_with_sentinel(w, "exp_out")

    out = lambda w: [w / "exp_out"]  # noqa: E731
    cases = [Case("export-model", name, run(*args), setup, expect, out, say) for name, args, expect, say in [
        ("--height 31", (*base, "--height", "31", "--width", "64"), (2,), "multiples of 32"),
        ("--height abc", (*base, "--height", "abc", "--width", "64"), (2,), ""),
        ("--width 0", (*base, "--height", "64", "--width", "0"), (2,), "--width 0"),
        ("--batch 0", (*base, "--height", "64", "--width", "64", "--batch", "0"), (2,), "--batch"),
        ("--opset 5", (*base, "--height", "64", "--width", "64", "--opset", "5"), (2,), "opset"),
        ("--opset 99", (*base, "--height", "64", "--width", "64", "--opset", "99"), (2,), "opset"),
        ("--task depth", ("--model", "pading", "--task", "depth"), (2,), ""),
        ("--model maskrcnn", ("--model", "maskrcnn"), (2,), ""),
        ("--msda cuda", (*base, "--msda", "cuda"), (2,), ""),
        ("--precision fp8", (*base, "--precision", "fp8"), (2,), ""),
        ("--precision f32 (runtime spelling)", (*base, "--precision", "f32"), (2,), ""),
        ("--calib-scenes 0", (*base, "--height", "64", "--width", "64", "--precision", "int8", "--calib-scenes",
                              "0"), (2,), "--calib-scenes"),
        ("--calib on fp32", (*base, "--calib", "{w}"), (2,), "--calib"),
        ("--calib missing dir", (*base, "--height", "64", "--width", "64", "--precision", "int8", "--calib",
                                 "{w}/nope"), (2,), "does not exist"),
        ("--calib dir of non-images", (*base, "--height", "64", "--width", "64", "--precision", "int8", "--calib",
                                       "{w}/calib_txt"), (2,), "no images"),
        ("--fp32-islands on fp32", (*base, "--fp32-islands", "layernorm"), (2,), "needs --precision"),
        ("--fp32-islands unknown block", (*base, "--height", "64", "--width", "64", "--precision", "fp16",
                                          "--fp32-islands", "warp_drive"), (2,), "warp_drive"),
        ("--weights missing", ("--model", "pading", "--weights", "{w}/none.pth"), (2,), "does not exist"),
        ("--weights empty file", ("--model", "pading", "--weights", "{w}/empty.pth"), (2,), ""),
        ("--weights text file", ("--model", "pading", "--weights", "{w}/text.pth"), (2,), ""),
        ("--weights an image", ("--model", "pading", "--weights", "{w}/img.png"), (2,), ""),
        ("--weights a directory", ("--model", "pading", "--weights", "{w}/calib_txt"), (2,), ""),
        ("--weights torch file of a list", ("--model", "pading", "--weights", "{w}/list.pth"), (2,), ""),
        ("--config missing", ("--model", "pading", "--config", "{w}/none.yaml"), (2,), "does not exist"),
        ("--config empty", ("--model", "pading", "--config", "{w}/empty.yaml"), (2, 0), ""),
        ("--config YAML syntax error", ("--model", "pading", "--config", "{w}/bad.yaml"), (2,), ""),
        ("--config python tag", ("--model", "pading", "--config", "{w}/evil.yaml"), (2,), ""),
        ("--config _BASE_ missing", ("--model", "pading", "--config", "{w}/base_missing.yaml"), (2,), ""),
        ("--config a list", ("--model", "pading", "--config", "{w}/list.yaml"), (2,), ""),
        ("--dynamic with --height", (*base, "--dynamic", "--height", "64"), (2,), "contradict"),
        ("--from-onnx garbage", ("--from-onnx", "{w}/t.onnx", "--precision", "fp16"), (2,), ""),
        ("--from-onnx with --model", ("--from-onnx", "{w}/m.onnx", "--model", "pading", "--precision", "fp16"),
         (2,), "would be ignored"),
        ("--from-onnx onto itself", ("--from-onnx", "{w}/m.onnx", "--precision", "fp16", "--output", "{w}/m.onnx"),
         (2,), "itself"),
        ("--output without .onnx", (*base, "--height", "64", "--width", "64", "--output", "{w}/exp_out/m.txt"), (2,),
         ".onnx"),
        ("--from-onnx fp32 -> fp32", ("--from-onnx", "{w}/m.onnx", "--precision", "fp32"), (2, 0), ""),
    ]]

    def files(w: Path) -> None:
        setup(w)
        (w / "calib_txt").mkdir(exist_ok=True)
        (w / "calib_txt" / "a.txt").write_text("x")
        (w / "empty.pth").write_bytes(b"")
        (w / "text.pth").write_text("weights")
        (w / "img.png").write_bytes(GOOD)
        (w / "t.onnx").write_text("hello")
        import torch

        torch.save([1, 2, 3], w / "list.pth")
        (w / "empty.yaml").write_text("")
        (w / "bad.yaml").write_text("MODEL: [unclosed\n")
        (w / "evil.yaml").write_text("MODEL: !!python/object/apply:os.system ['echo pwned']\n")
        (w / "base_missing.yaml").write_text("_BASE_: nowhere.yaml\n")
        (w / "list.yaml").write_text("- a\n- b\n")

    for c in cases:
        c.setup = files
    return cases


def triton_cases() -> list[Case]:
    def run(*args: str) -> Callable[[Path], list[str]]:
        return lambda w: tri(*[a.replace("{w}", str(w)) for a in args])

    def setup(w: Path) -> None:
        out_with_sentinel(w, "tri_foreign")
        (w / "t.onnx").write_text("hello")
        _foreign_onnx(w / "foreign.onnx")

    return [Case("export-triton", name, run(*args), setup, expect, lambda w: [w / "tri_foreign"], say)
            for name, args, expect, say in [
                ("--output a folder of other files", ("--model", "{w}/m.onnx", "--output", "{w}/tri_foreign"), (2,),
                 "not a repository"),
                ("--model garbage", ("--model", "{w}/t.onnx", "--output", "{w}/tri1"), (2,), ""),
                ("--model foreign ONNX", ("--model", "{w}/foreign.onnx", "--output", "{w}/tri2"), (2,), "metadata"),
                ("--backend tensorrt for .onnx", ("--model", "{w}/m.onnx", "--output", "{w}/tri3", "--backend",
                                                  "tensorrt"), (2,), "TensorRT engine"),
                ("--max-batch 0", ("--model", "{w}/m.onnx", "--output", "{w}/tri4", "--max-batch", "0"), (2,), ""),
                ("--name with a slash", ("--model", "{w}/m.onnx", "--output", "{w}/tri5", "--name", "a/b"), (2,), ""),
                ("--name empty", ("--model", "{w}/m.onnx", "--output", "{w}/tri6", "--name", ""), (2,), ""),
                ("--task depth", ("--model", "{w}/m.onnx", "--output", "{w}/tri7", "--task", "depth"), (2,), ""),
                ("--output /proc", ("--model", "{w}/m.onnx", "--output", "/proc/zsd_repo"), (2,), ""),
                ("--threads -1", ("--model", "{w}/m.onnx", "--output", "{w}/tri8", "--threads", "-1"), (2,), ""),
            ]]


def bench_cases() -> list[Case]:
    def run(*args: str) -> Callable[[Path], list[str]]:
        return lambda w: bench(*[a.replace("{w}", str(w)) for a in args])

    def setup(w: Path) -> None:
        out_with_sentinel(w, "bench_out")
        (w / "garbage.json").write_text("{not json")
        (w / "list.json").write_text("[1, 2]")
        (w / "gate_str.json").write_text(json.dumps({"gate": {"speedup": {"a": "fast"}, "accuracy": {}}}))
        (w / "gate_empty.json").write_text(json.dumps({"gate": {"speedup": {}, "accuracy": {}}}))
        (w / "coco_empty.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
        (w / "coco_nocats.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                                         "annotations": [{"image_id": 1, "file_name": "a.png",
                                                                          "segments_info": []}]}))
        (w / "imgs").mkdir(exist_ok=True)
        (w / "imgs" / "a.png").write_bytes(GOOD)

    out = lambda w: [w / "bench_out"]  # noqa: E731
    return [Case("zsd-bench", name, run(*args), setup, expect, out, say) for name, args, expect, say in [
        ("no subcommand", (), (2,), ""),
        ("accuracy: dataset kind unknown", ("accuracy", "--model", "{w}/m.onnx", "--dataset", "kitti:{w}/imgs",
                                            "--output", "{w}/bench_out"), (2,), ""),
        ("accuracy: coco-panoptic JSON garbage", ("accuracy", "--model", "{w}/m.onnx", "--dataset",
                                                  "coco-panoptic:{w}/garbage.json,{w}/imgs,{w}/imgs", "--output",
                                                  "{w}/bench_out"), (2,), ""),
        ("accuracy: coco-panoptic JSON a list", ("accuracy", "--model", "{w}/m.onnx", "--dataset",
                                                 "coco-panoptic:{w}/list.json,{w}/imgs,{w}/imgs", "--output",
                                                 "{w}/bench_out"), (2,), ""),
        ("accuracy: coco-panoptic without annotations", ("accuracy", "--model", "{w}/m.onnx", "--dataset",
                                                         "coco-panoptic:{w}/coco_empty.json,{w}/imgs,{w}/imgs",
                                                         "--output", "{w}/bench_out"), (2,), ""),
        ("accuracy: coco-panoptic without categories", ("accuracy", "--model", "{w}/m.onnx", "--dataset",
                                                        "coco-panoptic:{w}/coco_nocats.json,{w}/imgs,{w}/imgs",
                                                        "--output", "{w}/bench_out"), (2,), ""),
        ("accuracy: images folder of one good image", ("accuracy", "--model", "{w}/m.onnx", "--dataset",
                                                       "images:{w}/imgs", "--backend", "onnxruntime", "--output",
                                                       "{w}/bench_out2"), (0, 1, 2), ""),
        ("accuracy: --backend warp", ("accuracy", "--model", "{w}/m.onnx", "--backend", "warp", "--output",
                                      "{w}/bench_out"), (2,), ""),
        ("accuracy: model garbage", ("accuracy", "--model", "{w}/garbage.json", "--output", "{w}/bench_out"), (2,),
         ""),
        ("latency: --sizes 0x0", ("latency", "--model", "{w}/m.onnx", "--sizes", "0x0", "--output",
                                  "{w}/bench_out"), (2,), ""),
        ("latency: --sizes abc", ("latency", "--model", "{w}/m.onnx", "--sizes", "abc", "--output",
                                  "{w}/bench_out"), (2,), ""),
        ("latency: --iters 0", ("latency", "--model", "{w}/m.onnx", "--iters", "0", "--output", "{w}/bench_out"),
         (2,), ""),
        ("latency: --backends nothing known", ("latency", "--model", "{w}/m.onnx", "--backends", "warp",
                                               "--output", "{w}/bench_out"), (2,), ""),
        ("check: garbage JSON", ("check", "--baseline", "{w}/garbage.json", "--current", "{w}/garbage.json"), (2,),
         "not JSON"),
        ("check: a JSON list", ("check", "--baseline", "{w}/list.json", "--current", "{w}/list.json"), (2,), "gate"),
        ("check: string speed-up", ("check", "--baseline", "{w}/gate_str.json", "--current", "{w}/gate_str.json"),
         (2,), "not numbers"),
        ("check: empty baseline", ("check", "--baseline", "{w}/gate_empty.json", "--current",
                                   "{w}/gate_empty.json"), (2,), ""),
        ("check: missing file", ("check", "--baseline", "{w}/none.json", "--current", "{w}/none.json"), (2,),
         "does not exist"),
        ("check: a directory", ("check", "--baseline", "{w}/imgs", "--current", "{w}/imgs"), (2,), "directory"),
        ("compare: missing report", ("compare", "{w}/none.json", "{w}/none2.json", "--output", "{w}/bench_out"),
         (2,), ""),
        ("compare: garbage reports", ("compare", "{w}/garbage.json", "{w}/garbage.json", "--output",
                                      "{w}/bench_out"), (2,), ""),
        ("merge: garbage", ("merge", "{w}/garbage.json", "--output", "{w}/bench_out/b.json"), (2,), ""),
        ("precision: not an onnx", ("precision", "--onnx", "{w}/garbage.json", "--precision", "int8", "--output",
                                    "{w}/bench_out/s.json"), (2,), ""),
        ("video: missing file", ("video", "--model", "{w}/m.onnx", "--source", "{w}/none.mp4", "--output",
                                 "{w}/bench_out"), (2,), ""),
        ("serve: repository is a file", ("serve", "--repository", "{w}/garbage.json", "--output", "{w}/bench_out"),
         (2,), ""),
    ]]


def engine_and_api_cases() -> list[Case]:
    def setup(w: Path) -> None:
        (w / "img.png").write_bytes(GOOD)
        (w / "t.onnx").write_text("hello")

    cases = [Case("build-engine", name, (lambda w, a=args: eng(*[x.replace("{w}", str(w)) for x in a])), setup,
                  (2,), lambda w: [], say) for name, args, say in [
        ("no TensorRT here", ("--onnx", "{w}/m.onnx", "--output", "{w}/e.plan"), ""),
        ("--onnx garbage", ("--onnx", "{w}/t.onnx", "--output", "{w}/e.plan"), ""),
        ("--onnx missing", ("--onnx", "{w}/none.onnx", "--output", "{w}/e.plan"), ""),
        ("--precision fp64", ("--onnx", "{w}/m.onnx", "--output", "{w}/e.plan", "--precision", "fp64"), ""),
        ("--workspace -1", ("--onnx", "{w}/m.onnx", "--output", "{w}/e.plan", "--workspace", "-1"), ""),
    ]]
    for name, code, expect, say in [
        ("segment_files with a Path", "r = zsdeploy.segment_files(sys.argv[1], __import__('pathlib').Path("
                                      "sys.argv[2]))\nassert len(r) == 1", (0,), ""),
        ("segment_files with a str", "r = zsdeploy.segment_files(sys.argv[1], sys.argv[2])\nassert len(r) == 1",
         (0,), ""),
        ("segment_files with a list of str", "r = zsdeploy.segment_files(sys.argv[1], [sys.argv[2], sys.argv[2]])"
                                             "\nassert len(r) == 2", (0,), ""),
        ("segment_files with an int", "zsdeploy.segment_files(sys.argv[1], 5)", (4,), "must be a path"),
        ("segment_files with a folder", "r = zsdeploy.segment_files(sys.argv[1], "
                                        "__import__('os').path.dirname(sys.argv[2]))\nassert len(r) >= 1", (0,), ""),
        ("segment_files with an empty list", "assert zsdeploy.segment_files(sys.argv[1], []) == []", (0, 2), ""),
        ("open_pipeline with precision f32", "zsdeploy.open_pipeline(sys.argv[1], precision='f32')", (0,), ""),
        ("open_pipeline with precision fp64", "zsdeploy.open_pipeline(sys.argv[1], precision='fp64')", (2,), ""),
        ("open_pipeline with a missing file", "zsdeploy.open_pipeline(sys.argv[2] + '.missing.onnx')", (2,), ""),
        ("open_pipeline with backend None", "zsdeploy.open_pipeline(sys.argv[1], backend=None)", (0, 2), ""),
        ("segment with a numpy array", "import numpy as np\np = zsdeploy.open_pipeline(sys.argv[1])\n"
                                       "r = p([np.zeros((40, 50, 3), np.uint8)])\nassert len(r) == 1", (0,), ""),
        ("segment with a float image", "import numpy as np\np = zsdeploy.open_pipeline(sys.argv[1])\n"
                                       "p([np.zeros((40, 50, 3), np.float64)])", (4,), "must be a uint8"),
        ("segment with a 2-D array", "import numpy as np\np = zsdeploy.open_pipeline(sys.argv[1])\n"
                                     "p([np.zeros((40, 50), np.uint8)])", (4,), "must be a uint8"),
    ]:
        cases.append(Case("Python API", name, (lambda w, c=code: [*api(c), str(w / "m.onnx"), str(w / "img.png")]),
                          setup, expect, lambda w: [], say))
    return cases


# ------------------------------------------------------------------------------------------------ running
LEFTOVER = re.compile(r"^\..*(\.tmp|\.partial-.*|\.old-\d+)$")


def judge(case: Case, r: subprocess.CompletedProcess, w: Path) -> str:
    """'' when the case is clean, else why not."""
    err = r.stderr
    if r.returncode not in case.expect:
        return f"exit {r.returncode} (expected {'/'.join(map(str, case.expect))}): {err.strip()[-300:]}"
    if "Traceback" in err:
        return "traceback: " + err.strip()[-300:]
    if r.returncode in (2, 4):
        lines = [ln for ln in err.splitlines() if "error:" in ln]
        if len(lines) != 1 or "Fix:" not in lines[0]:
            return "not one paragraph 'error: ... Fix: ...': " + err.strip()[-300:]
        if case.must_say and case.must_say.lower() not in lines[0].lower():
            return f"message does not name {case.must_say!r}: {lines[0][:300]}"
    for d in case.outputs(w):
        if d.is_dir():
            left = [p.name for p in d.rglob("*") if LEFTOVER.match(p.name)]
            if left:
                return f"leftovers in {d.name}: {left[:3]}"
            if (d / SENTINEL).exists() and (d / SENTINEL).read_text() != "keep me":
                return f"{SENTINEL} in {d.name} was changed"
            if not (d / SENTINEL).exists() and case.setup is not None and "out_" in d.name:
                return f"{SENTINEL} in {d.name} was deleted"
    return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="build/hostile_sweep")
    p.add_argument("--report", default="build/hostile_sweep/report.md")
    p.add_argument("--only", help="run the cases of one kind (substring)")
    args = p.parse_args()
    w = Path(args.work).resolve()
    w.mkdir(parents=True, exist_ok=True)
    if not (w / "m.onnx").is_file():
        print("exporting the demo PADing at 64x64 ...", flush=True)
        subprocess.run(exp("--model", "pading", "--weights", "demo", "--height", "64", "--width", "64", "--output",
                           str(w / "m.onnx")), check=True, capture_output=True)
    cases = [*image_cases(), *option_cases(), *model_cases(), *export_cases(), *triton_cases(), *bench_cases(),
             *engine_and_api_cases()]
    if args.only:
        cases = [c for c in cases if args.only in c.kind]
    rows = []
    t0 = time.time()
    for i, c in enumerate(cases, 1):
        c.setup(w)
        r = subprocess.run(c.argv(w), capture_output=True, text=True, cwd=w, timeout=900,
                           env={**os.environ, **c.env})
        why = judge(c, r, w)
        last = (r.stderr.strip().splitlines() or [""])[-1].replace(str(w), "<work>")[:160]
        rows.append((c, r.returncode, why.replace(str(w), "<work>"), last))
        print(f"[{i}/{len(cases)}] {'clean' if not why else 'NOT CLEAN'}  {c.kind}: {c.name} (exit {r.returncode})"
              + (f"\n      {why}" if why else ""), flush=True)
    lines = [f"# Hostile-input sweep ({len(cases)} cases, {time.time() - t0:.0f} s)", ""]
    for kind in dict.fromkeys(c.kind for c, *_ in rows):
        mine = [row for row in rows if row[0].kind == kind]
        clean = sum(1 for row in mine if not row[2])
        lines += [f"## {kind}: {clean} of {len(mine)} clean", "", "| case | exit | verdict / last line of stderr |",
                  "|---|---|---|"]
        for c, code, why, last in mine:
            lines.append(f"| {c.name} | {code} | {'NOT CLEAN: ' + why if why else last} |".replace("\n", " "))
        lines.append("")
    total_clean = sum(1 for row in rows if not row[2])
    lines.insert(1, f"\n**{total_clean} of {len(rows)} clean.**")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines) + "\n")
    print(f"{total_clean} of {len(rows)} clean; report: {args.report}")
    return 0 if total_clean == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
