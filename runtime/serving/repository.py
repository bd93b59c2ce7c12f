"""Write a Triton model repository for a zsdeploy export: ensemble IMAGE -> pre-processing -> network ->
post-processing -> (id_map, segments).

Layout for `--name pading_panoptic` (the default name is `<model>_<task>`):
    REPO/pading_panoptic/               ensemble: IMAGE (encoded bytes) -> id_map, segments (JSON)
    REPO/pading_panoptic_preprocess/    Python backend: zsdeploy.runtime pre-processing (resize, pad)
    REPO/pading_panoptic_network/       tensorrt_plan | onnxruntime | openvino | Python backend running zsdeploy's own
    REPO/pading_panoptic_postprocess/   Python backend: upstream post-processing + trt-infer's JSON
    REPO/.zsdeploy-triton.json          what the repository was written from (also marks it as ours)
The repository is built in a temporary directory next to REPO and renamed into place, so a repository written over
an existing one is replaced as a whole (never half old, half new).

A ZegFormer bundle directory gets one Python-backend model instead (runtime.serving.zegformer_repository): the
vocabulary comes with each request.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..files import check_output_dir, publish, staging_dir
from ..errors import ZsdError
from ..artifacts.onnx_metadata import ModelInfo, has_msda_plugin
from .pbtxt import EnsembleStep, ModelConfig, Tensor
from .steps import IMAGE_INFO, STEP_FORMAT, step_segmenter

BACKENDS = ("python", "onnxruntime", "openvino", "tensorrt")
MARKER = ".zsdeploy-triton.json"
MARKER_FORMAT = "zsdeploy-triton/1"
DEFAULT_MAX_BATCH = 8

# Triton's Python stub embeds an isolated interpreter that ignores PYTHONPATH; the generated model.py honours it,
# so a server started with PYTHONPATH=<site-packages holding zsdeploy> works without a conda-pack environment.
# site.addsitedir (not sys.path.append) also runs the .pth files of editable installs.
MODEL_PY_SHIM = '''"""zsdeploy {role} step, written by export-triton; the code lives in zsdeploy.runtime.serving.models."""
import os
import site

for _d in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _d:
        site.addsitedir(_d)

from zsdeploy.runtime.serving.models import {cls} as TritonPythonModel  # noqa: E402,F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    """What export-triton's flags choose (None = follow the export)."""

    backend: str | None = None  # default: tensorrt for a .plan, onnxruntime for an .onnx
    max_batch: int | None = None  # dynamic exports: default 8; static exports: their batch
    instances: int = 1  # instance_group count of every step
    dynamic_batching: bool = False  # on the network model
    max_queue_delay_us: int = 0
    task: str | None = None  # post-processing to serve (default: the export's task)
    name: str | None = None  # ensemble name (default: <model>_<task>)
    threads: int | None = None  # CPU threads of the network (onnxruntime / openvino / python)
    # ZegFormer bundles only
    clip_bpe: str | None = None  # CLIP's BPE file, copied into the repository (default: $ZSD_CLIP_BPE / open_clip's)
    max_classes: int | None = None  # names per request vocabulary (default 1000)
    vocab_cache: int | None = None  # vocabularies kept embedded per model instance (default 16)


def _load_export(model: Path) -> tuple[ModelInfo, str]:
    """(metadata, kind) of a PADing export; kind is "onnx" or "plan"."""
    from ..backends import ENGINE_SUFFIXES

    if not model.exists():
        raise ZsdError(f"model {model} does not exist.",
                       "pass an .onnx from export-model or a .plan from build-engine.")
    if model.is_dir():  # not a bundle (zsdeploy.families sends those to their family's writer)
        raise ZsdError(f"{model} is a directory without bundle.json, so neither a ZegFormer bundle nor a PADing "
                       "export.", "pass a PADing .onnx / .plan, or the directory export-model --model zegformer "
                              "wrote.")
    if model.suffix == ".onnx":
        from ..backends.onnxruntime_backend import read_onnx_metadata

        meta, kind = read_onnx_metadata(model), "onnx"
    elif model.suffix in ENGINE_SUFFIXES:
        from ..artifacts.sidecar import read_sidecar

        meta, kind = read_sidecar(model).metadata, "plan"
    else:
        raise ZsdError(f"{model} is neither an ONNX model (.onnx) nor a TensorRT engine "
                       f"({', '.join(ENGINE_SUFFIXES)}).",
                       "pass the file export-model or build-engine wrote.")
    return ModelInfo.from_metadata(meta, str(model)), kind


def _int(meta: dict[str, str], key: str) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        return -1  # older exports: let Triton take the dim from the model


def check_common_options(opts: RepositoryOptions) -> None:
    """Numbers and the model name, for every kind of export."""
    for flag, v, low in (("--instances", opts.instances, 1), ("--max-batch", opts.max_batch, 1),
                         ("--threads", opts.threads, 1), ("--max-queue-delay-us", opts.max_queue_delay_us, 0),
                         ("--max-classes", opts.max_classes, 1), ("--vocab-cache", opts.vocab_cache, 1)):
        if v is not None and v < low:
            raise ZsdError(f"{flag} {v} must be >= {low}.", f"pass {flag} {low} or more.")
    if opts.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", opts.name):
        raise ZsdError(f"--name {opts.name!r} is not a usable Triton model name.",
                       "use letters, digits, '_', '.' and '-' (starting with a letter or digit).")


def _check_options(opts: RepositoryOptions, info: ModelInfo, kind: str, model: Path) -> tuple[str, int]:
    """(backend, max_batch_size) after checking the flags against the export."""
    plugin_graph = kind == "onnx" and has_msda_plugin(info.raw)
    # A --msda plugin export: Triton's own onnxruntime / openvino backends cannot run its MSDeformAttn nodes;
    # zsdeploy's Python backend runs it with OpenVINO and zsdeploy's extension.
    backend = opts.backend or ("tensorrt" if kind == "plan" else "python" if plugin_graph else "onnxruntime")
    if backend not in BACKENDS:
        raise ZsdError(f"--backend {backend} is not one of {', '.join(BACKENDS)}.", "choose one of them.")
    if plugin_graph and backend in ("onnxruntime", "openvino"):
        raise ZsdError(f"{model.name} has MSDeformAttn plugin nodes (exported with --msda "
                       f"{info.raw.get('msda_lowering')}), which Triton's {backend} backend cannot run.",
                       "drop --backend (zsdeploy's Python backend runs it with OpenVINO and zsdeploy's extension), "
                       "build a TensorRT engine and serve it with --backend tensorrt, or re-export with --msda "
                       "gridsample.")
    if backend == "tensorrt" and kind != "plan":
        raise ZsdError(f"--backend tensorrt needs a TensorRT engine, {model.name} is an ONNX model.",
                       "build one with build-engine --onnx M.onnx --output M.plan, or serve the ONNX with --backend "
                       "onnxruntime, openvino or python.")
    if backend in ("onnxruntime", "openvino") and kind != "onnx":
        raise ZsdError(f"--backend {backend} runs ONNX models, {model.name} is a TensorRT engine.",
                       "pass the .onnx the engine was built from, or use --backend tensorrt.")
    check_common_options(opts)
    if info.dynamic:
        return backend, opts.max_batch or DEFAULT_MAX_BATCH
    sb = info.static_batch or 1
    if opts.max_batch is not None and opts.max_batch != sb:
        raise ZsdError(f"--max-batch {opts.max_batch}: {model.name} was exported with a static batch of {sb}.",
                       f"drop --max-batch (it follows the export), or re-export with --batch {opts.max_batch} or "
                       "--dynamic.")
    if sb > 1 and backend != "python":
        # Native backends would get fewer images than the graph's fixed batch; zsdeploy's backend fills it.
        raise ZsdError(f"{model.name} has a static batch of {sb}, which Triton's {backend} backend cannot fill for "
                       "smaller requests.", "use --backend python, or re-export with --batch 1 or --dynamic.")
    return backend, sb


def sha256_of(path: Path) -> str:
    from ..files import file_sha256

    return file_sha256(path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ZsdError(f"--output {out} is a file, not a directory.", "pass a directory for the model repository.")
    check_output_dir(out.parent if str(out.parent) else Path("."), given=out)  # writable, not full: before work
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        # Replacing a directory as a whole must never delete something export-triton did not write.
        raise ZsdError(f"--output {out} exists and is not a repository written by export-triton; it is left alone.",
                       "pass a new or empty directory, or one that export-triton wrote before (it is replaced).")


def carry_foreign_entries(out: Path, tmp: Path, new_models: set[str]) -> list[str]:
    """Copy into the staged repository `tmp` what the user added to the existing repository `out` (every top-level
    entry its marker does not list as export-triton's), so that replacing `out` as a whole deletes nothing
    export-triton did not write. Hard links where the file system allows (no second copy of a model's weights).
    A user's folder named like one of the new models is refused: it would be overwritten."""
    try:
        old = json.loads((out / MARKER).read_text(encoding="utf-8"))
        ours = set(old["models"].values()) if isinstance(old.get("models"), dict) else set()
    except (OSError, ValueError, AttributeError):
        return []  # no repository of ours there yet (check_output refused anything else)
    theirs = sorted(e.name for e in out.iterdir() if e.name != MARKER and e.name not in ours)
    clash = [n for n in theirs if n in new_models]
    if clash:
        raise ZsdError(f"--output {out} holds {clash[0]!r}, which export-triton did not write there, and the new "
                       f"repository has a model of that name: replacing it would delete yours.",
                       "pass --name to give the new models other names, or move that folder out first.")

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for name in theirs:
        src, dst = out / name, tmp / name
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)
        elif src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            link_or_copy(str(src), str(dst))
    return theirs


def kept_note(marker: dict) -> str:
    kept = marker.get("kept") or []
    return f" Kept what export-triton did not write there: {', '.join(kept)}." if kept else ""


def write_repository(model: str | os.PathLike[str], output: str | os.PathLike[str],
                     options: RepositoryOptions | None = None) -> Path:
    """Write the Triton repository for a one-graph export (.onnx / .plan) to `output`; returns its path. (A bundle's
    family writes its own: zsdeploy.families.write_triton_repository chooses.)

    Raises ZsdError for a missing/foreign model, flags that do not fit the export, or an `output` that exists but
    was not written by export-triton. Nothing partial is left: the repository appears complete or not at all.
    """
    opts = options or RepositoryOptions()
    model, out = Path(model), Path(output)
    bundle_only = [flag for flag, v in (("--clip-bpe", opts.clip_bpe), ("--max-classes", opts.max_classes),
                                        ("--vocab-cache", opts.vocab_cache)) if v is not None]
    if bundle_only:
        raise ZsdError(f"{', '.join(bundle_only)} only apply to ZegFormer bundles (a per-request vocabulary); "
                       f"{model.name} is a PADing export.", f"drop {', '.join(bundle_only)}.")
    info, kind = _load_export(model)
    backend, max_batch = _check_options(opts, info, kind, model)
    task = step_segmenter(info, opts.task or info.task).task  # checks that the export can post-process `task`
    name = opts.name or f"{info.model}_{task}"
    check_output(out)

    meta = info.raw
    h, w = info.static_hw if info.static_hw else (-1, -1)
    stride = _int(meta, "mask_stride")
    mh, mw = (h // stride, w // stride) if h > 0 and stride > 0 else (-1, -1)
    q, k1 = _int(meta, "num_queries"), info.num_classes + 1
    image = Tensor("IMAGE", "bytes", (1,))
    images = Tensor("images", "fp32", (3, h, w))
    image_info = Tensor("image_info", "int32", (len(IMAGE_INFO),))
    class_logits = Tensor("class_logits", "fp32", (q, k1))
    mask_logits = Tensor("mask_logits", "fp32", (q, mh, mw))
    id_map = Tensor("id_map", "int32", (-1, -1))
    segments = Tensor("segments", "bytes", (1,))
    names = {s: f"{name}_{s}" for s in ("preprocess", "network", "postprocess")}
    step_doc = json.dumps({"format": STEP_FORMAT, "task": task, "metadata": meta}, indent=1) + "\n"

    with staging_dir(out) as tmp:
        def python_step(role: str, cls: str, ins: list[Tensor], outs: list[Tensor]) -> None:
            d = tmp / names[role]
            write_text(d / "config.pbtxt", ModelConfig(names[role], max_batch, ins, outs, backend="python",
                                                   instance_count=opts.instances).text())
            write_text(d / "1" / "model.py", MODEL_PY_SHIM.format(role=role, cls=cls))
            write_text(d / "1" / "zsdeploy_step.json", step_doc)

        python_step("preprocess", "PreprocessModel", [image], [images, image_info])
        python_step("postprocess", "PostprocessModel", [class_logits, mask_logits, image_info], [id_map, segments])

        net_dir = tmp / names["network"] / "1"
        net_dir.mkdir(parents=True)
        model_file = f"model{'.onnx' if kind == 'onnx' else '.plan'}"
        shutil.copyfile(model, net_dir / model_file)
        if kind == "plan":  # the sidecar travels with the engine (zsdeploy's TensorRT backend reads it)
            shutil.copyfile(model.with_name(model.name + ".json"), net_dir / (model_file + ".json"))
        params: dict[str, str] = {}
        net = ModelConfig(names["network"], max_batch, [images], [class_logits, mask_logits],
                          instance_count=opts.instances, dynamic_batching=opts.dynamic_batching,
                          max_queue_delay_us=opts.max_queue_delay_us, default_model_filename=model_file)
        if backend == "tensorrt":
            net.platform, net.instance_kind = "tensorrt_plan", "KIND_GPU"
        elif backend == "onnxruntime":
            net.backend = "onnxruntime"
            if opts.threads:
                params["intra_op_thread_count"] = str(opts.threads)
        elif backend == "openvino":
            net.backend = "openvino"
            if opts.threads:
                params["INFERENCE_NUM_THREADS"] = str(opts.threads)
        else:
            net.backend, net.default_model_filename = "python", None
            net.instance_kind = "KIND_GPU" if kind == "plan" else "KIND_CPU"
            params["model_file"] = model_file
            if opts.threads:
                params["threads"] = str(opts.threads)
            write_text(net_dir / "model.py", MODEL_PY_SHIM.format(role="network", cls="NetworkModel"))
        net.parameters = params
        write_text(tmp / names["network"] / "config.pbtxt", net.text())

        ensemble = ModelConfig(name, max_batch, [image], [id_map, segments], platform="ensemble", steps=[
            EnsembleStep(names["preprocess"], {"IMAGE": "IMAGE"}, {"images": "images", "image_info": "image_info"}),
            EnsembleStep(names["network"], {"images": "images"},
                         {"class_logits": "class_logits", "mask_logits": "mask_logits"}),
            EnsembleStep(names["postprocess"], {"class_logits": "class_logits", "mask_logits": "mask_logits",
                                                "image_info": "image_info"},
                         {"id_map": "id_map", "segments": "segments"}),
        ])
        write_text(tmp / name / "config.pbtxt", ensemble.text())
        (tmp / name / "1").mkdir()  # Triton wants a version directory for ensembles too
        models = {"ensemble": name, **names}
        kept = carry_foreign_entries(out, tmp, set(models.values()))
        write_text(tmp / MARKER, json.dumps({
            "format": MARKER_FORMAT, "source": str(model.resolve()), "source_sha256": sha256_of(model),
            "kind": kind, "network_backend": backend, "max_batch_size": max_batch, "task": task,
            "models": models, "kept": kept, "options": asdict(opts)}, indent=1) + "\n")
        publish(tmp, out, "the model repository")
    return out


def describe_repository(out: Path) -> str:
    """One sentence on what a repository written by `write_repository` serves (export-triton prints it)."""
    marker = json.loads((out / MARKER).read_text())
    return (f"ensemble {marker['models']['ensemble']!r} (network: {marker['network_backend']}, max_batch_size "
            f"{marker['max_batch_size']}, task {marker['task']}). Input IMAGE (encoded image bytes, BYTES [B,1]); "
            "outputs id_map (INT32 [B,H,W]) and segments (JSON)." + kept_note(marker))
