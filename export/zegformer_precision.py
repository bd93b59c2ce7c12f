"""Explicit-precision ZegFormer bundles: `export-model --model zegformer --precision fp16 [--fp32-islands ...]`.

The segmenter (MaskFormer R101) and the CLIP crop classifier (ViT-B/16 on masked crops) are converted with
export.precision's converter and fp32-island machinery, exactly as PADing graphs are (one code path: `convert`).
The text encoder stays fp32: it runs once per vocabulary and its embeddings are cached (in the bundle, or in
`<bundle>/.vocab_cache/`), so fp16 would buy nothing at run time and would cost embedding accuracy for good.

int8 is refused: Q/DQ needs calibration, and there is no calibration story for the CLIP crop classifier yet (its
inputs are the segmenter's masks of the images, so the calibration set would have to run the segmenter first).

Default fp16 islands (`--fp32-islands default`): `layernorm` (every LayerNormalization: the decoder's 18 in the
segmenter, the ViT's in the crop classifier). Why, on numerical grounds first: the variance of a transformer's
residual stream overflows fp16 where activations reach a few hundred (CLIP ViTs have such outlier channels; OpenAI's
own CLIP runs its LayerNorms in fp32 under fp16, and TensorRT warns about fp16 LayerNorm after attention). Measured
(ONNX Runtime CPU, stand-in R101 + the test suite's tiny CLIP, gzss config, 256x320, 2 generated small-target
scenes, fp16 bundle vs the fp32 bundle; 2026-12-02):

    islands                 class_logits rel L2   mask_logits rel L2   clip_logits rel L2   semantic agreement small/all
    none                    4.6e-3                1.4e-3               7.0e-4               99.94 / 99.90 %
    layernorm (default)     3.3e-3                1.3e-3               1.0e-3               99.97 / 99.97 %
    attn_softmax            4.5e-3                1.5e-3               7.2e-4               99.88 / 99.87 %
    layernorm,attn_softmax  3.2e-3                1.3e-3               1.0e-3               99.95 / 99.93 %

attn_softmax showed no gain, so it is not a default (ask for it with --fp32-islands layernorm,attn_softmax). The CLIP
crop classifier's mask-box / RoIAlign arithmetic (162 of its 231 nodes, coordinates up to the image size) kept in
fp32 changed its logits by nothing measurable either (7.1e-4 -> 8.2e-4, crop argmax 100 % both), so it has no
island. ONNX Runtime's CPU runs many fp16 ops in fp32 between fp16 tensors: these numbers are the storage rounding;
on a GPU re-measure with zsd-bench accuracy on the engines.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnx

from ..runtime.errors import ZsdError
from .precision import PrecisionOptions, check_options, convert

#: Bundle graphs that --precision converts; the text encoder is not among them (module docstring).
CONVERTED_GRAPHS = ("segmenter", "crop_classifier")
#: fp32 islands of --precision fp16 when --fp32-islands is not given (or is `default`).
ZEGFORMER_FP16_ISLANDS: tuple[str, ...] = ("layernorm",)

Say = Callable[[str], None]


def zegformer_precision_options(opts: PrecisionOptions | None) -> PrecisionOptions:
    """The flags checked before any slow work, with ZegFormer's default islands made explicit (export.precision's
    defaults are PADing's: its MSDeformAttn sampling, which ZegFormer has none of)."""
    opts = opts if isinstance(opts, PrecisionOptions) else PrecisionOptions()
    if opts.precision == "int8":
        raise ZsdError("--precision int8: ZegFormer bundles can be exported in fp32 or fp16, not int8: int8 Q/DQ needs "
                       "calibration data, and there is no calibration story for the CLIP crop classifier yet (its "
                       "inputs are crops cut by the segmenter's own masks).",
                       "use --precision fp16 (segmenter and crop classifier in fp16, text encoder fp32), or fp32.")
    check_options(opts)  # unknown precision, --calib without int8, islands without a reduced precision, bad names
    if opts.precision == "fp16" and (opts.islands is None or opts.islands.strip() == "default"):
        opts = PrecisionOptions("fp16", ",".join(ZEGFORMER_FP16_ISLANDS) or "none")
    return opts


def convert_graph(proto: onnx.ModelProto, graph: str, opts: PrecisionOptions, *, where: str,
                  say: Say = print) -> onnx.ModelProto:
    """One bundle graph (its zsdeploy metadata already set) at `opts.precision`, the precision recorded in its
    metadata; the text encoder is always fp32."""
    if graph not in CONVERTED_GRAPHS:
        opts = PrecisionOptions()
    return convert(proto, opts, where=where, say=lambda m: say(f"  {graph}: {m.strip()}"))


def convert_zegformer_bundle(source: str | os.PathLike, output: str | os.PathLike, opts: PrecisionOptions | None,
                             *, say: Say = print) -> Path:
    """An existing fp32 bundle converted to `opts.precision` as a NEW bundle at `output` (nothing is traced): the
    segmenter and crop classifier converted, the text encoder re-written with its precision recorded, the default
    embeddings copied, bundle.json re-written with every file's size, sha256 and precision. For
    `export-model --from-onnx BUNDLE_DIR` (the vocabulary cache is not copied: it is rebuilt on first use)."""
    from ..runtime.artifacts.bundle_manifest import (
        BundleFile,
        GraphPrecision,
        bundle_root,
        describe_file,
        read_bundle_manifest,
        write_bundle_manifest,
    )
    from ..runtime.artifacts.onnx_metadata import metadata_of
    from .bundle_write import check_bundle_target, publish, staging_dir
    from .onnx_export import save_atomic

    src, out = Path(source), Path(output)
    root = bundle_root(src)
    if root is None:
        raise ZsdError(f"--from-onnx {src} is not a ZegFormer bundle (no bundle.json).",
                       "pass the bundle directory export-model --model zegformer wrote.")
    popts = zegformer_precision_options(opts)
    if out.resolve() == root.resolve():
        raise ZsdError("--output is the --from-onnx bundle itself; the fp32 bundle would be lost.",
                       "write the converted bundle to another directory.")
    check_bundle_target(out)
    manifest = read_bundle_manifest(root, verify=True)  # a changed graph would be converted silently otherwise
    not_fp32 = [g for g in manifest.graphs if manifest.graph_precision(g).precision != "fp32"]
    if not_fp32:
        raise ZsdError(f"--from-onnx {root}: its {', '.join(not_fp32)} graph(s) are already "
                       f"{manifest.graph_precision(not_fp32[0]).precision}; --precision converts fp32 bundles only.",
                       "pass the fp32 bundle (export-model --model zegformer without --precision), or re-export.")
    graphs: dict[str, BundleFile] = {}
    with staging_dir(out) as stage:
        for graph, entry in manifest.graphs.items():
            path = manifest.graph_file(root, graph)
            if graph not in CONVERTED_GRAPHS:
                say(f"  {graph}: kept fp32")
            proto = convert_graph(onnx.load(str(path)), graph, popts, where=str(path), say=say)
            save_atomic(proto, stage / entry.file)
            graphs[graph] = describe_file(stage, entry.file, GraphPrecision.from_metadata(metadata_of(proto)))
            del proto
        embeddings = {}
        for kind, entry in manifest.embeddings.items():
            shutil.copyfile(manifest.embeddings_file(root, kind), stage / entry.file)
            embeddings[kind] = describe_file(stage, entry.file)
        write_bundle_manifest(stage, replace(manifest, graphs=graphs, embeddings=embeddings))
        publish(stage, out)
    return out
