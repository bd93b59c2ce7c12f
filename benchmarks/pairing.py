"""What zsd-bench compares for each model family: the runners of an artifact and its PyTorch reference.

A family's pairing is registered under the family's name (`PAIRINGS`); a family derived from another (the demo
PADing from PADing) uses its parent's. zsd-bench's commands ask `pairing_for(model)` and never branch on the
family or on "is this a bundle?". Adding a family to zsd-bench = one `@register_pairing` class here.
"""
from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from typing import Any

from zsdeploy.families import MODELS, ModelFamily, family_for
from zsdeploy.runtime.backends.registry import AUTO, BackendSpec, backend_specs
from zsdeploy.runtime.errors import ZsdError
from zsdeploy.runtime.registry import Registry

from .report_io import say

#: the family measured when zsd-bench is given no artifact (PyTorch from --config / --weights only)
DEFAULT_FAMILY = "pading"


def torch_reference(args: argparse.Namespace, task: str, meta: dict[str, str] | None = None,
                    family: str = DEFAULT_FAMILY):
    """The PyTorch reference of an export (its registered family's `torch_reference`)."""
    if getattr(args, "reference", "pytorch") != "pytorch":
        raise ZsdError(f"--reference {args.reference} is not supported.", "use --reference pytorch.")
    return MODELS.get(family).torch_reference(task, meta, config=args.config, weights=args.weights,
                                              threads=args.threads)


def peer_name(backend: str, precision: str = "fp32", graph: str = "") -> str:
    """A zsd-bench runner's name: the registered backend, the graph variant it runs (e.g. "-int8") and its
    runtime precision unless fp32 (openvino, openvino-bf16, openvino-int8-bf16, ...)."""
    return backend + graph + ("" if precision == "fp32" else f"-{precision}")


# zsd-bench accuracy --backend NAME -> (load_backend backend, precision): auto, then each registered backend at each
# precision it computes in (auto, onnxruntime, openvino, openvino-bf16, tensorrt)
ACCURACY_BACKENDS = {AUTO: (AUTO, "fp32"), **{peer_name(s.name, p): (s.name, p) for s in backend_specs()
                                              for p in s.precisions}}


def load(path: str, threads: int | None, backend: str = "auto", precision: str = "fp32"):
    from zsdeploy.runtime.backends import load_backend

    if precision == "bf16":
        from zsdeploy.runtime.backends.openvino_backend import bf16_support

        ok, why = bf16_support()
        if not ok:  # a bf16 accuracy row measured in fp32 would be a false statement
            raise ZsdError(f"--backend openvino-bf16 needs a CPU that computes bf16, but {why}.",
                           "measure --backend openvino (fp32) on this machine, or run on a CPU with AMX / AVX512-BF16.")
    return load_backend(path, threads=threads, backend=backend, precision=precision)


class BenchPairing(ABC):
    """The runners zsd-bench measures for one family's artifacts."""

    @abstractmethod
    def accuracy_pair(self, args: argparse.Namespace, family: ModelFamily) -> tuple[Any, Any, tuple | None]:
        """(candidate, PyTorch reference, segmenter factories or None) for `zsd-bench accuracy`."""

    @abstractmethod
    def latency_backends(self, args: argparse.Namespace, names: list[str]) -> tuple[list, list[dict[str, str]]]:
        """(NamedBackends to time, [{backend, reason}] of the requested ones that cannot run here)."""


PAIRINGS: Registry[BenchPairing] = Registry("zsd-bench pairing")


def register_pairing(family: str):
    """Class decorator: one instance of the pairing, registered for `family` (and the families derived from it)."""
    def add(cls: type[BenchPairing]) -> type[BenchPairing]:
        PAIRINGS.register(family)(cls())
        return cls

    return add


def pairing_for(model: str | None) -> tuple[BenchPairing, ModelFamily]:
    """The pairing of the artifact `model` (its family's, or the nearest parent family's), and the family."""
    family = family_for(model)[0] if model else MODELS.get(DEFAULT_FAMILY)
    for cls in type(family).__mro__:
        name = getattr(cls, "name", "")
        if name in PAIRINGS:
            return PAIRINGS.get(name), family
    raise ZsdError(f"zsd-bench cannot measure {family.name} models yet.", f"measure one of {', '.join(PAIRINGS)}.")


@register_pairing("pading")
class OneGraphPairing(BenchPairing):
    """PADing: one .onnx / .plan; the reference is the family's PyTorch model (upstream's code, same weights)."""

    def accuracy_pair(self, args: argparse.Namespace, family: ModelFamily) -> tuple[Any, Any, tuple | None]:
        backend = load(args.model, args.threads, *ACCURACY_BACKENDS[args.backend])
        return backend, torch_reference(args, backend.info.task, backend.info.raw, family.name), None

    def latency_backends(self, args: argparse.Namespace, names: list[str]) -> tuple[list, list[dict[str, str]]]:
        return _one_graph_backends(args, names)


def _one_graph_backends(args: argparse.Namespace, names: list[str]) -> tuple[list, list[dict[str, str]]]:
    """torch / onnxruntime / tensorrt / OpenVINO / upstream runners of one PADing export (or engine)."""
    from .latency import CPU_DEVICE_NOTE, NamedBackend, device_memory_in_use

    backends: list[NamedBackend] = []
    unavailable: list[dict[str, str]] = []
    task = None
    model = None
    if "onnxruntime" in names:
        if not args.model or not args.model.endswith(".onnx"):
            raise ZsdError("--backends onnxruntime needs --model M.onnx.", "pass the ONNX file export-model wrote.")
        model = load(args.model, args.threads, "onnxruntime")  # auto would pick OpenVINO where installed
        on_gpu = "CUDAExecutionProvider" in getattr(model, "providers", ())
        backends.append(NamedBackend("onnxruntime", model, device_note=(
            "ONNX Runtime CUDA EP: not measured (its memory arena is not attributable)" if on_gpu
            else CPU_DEVICE_NOTE)))
    if "tensorrt" in names:
        plan = args.engine or (args.model if args.model and not args.model.endswith(".onnx") else None)
        if not plan:
            unavailable.append({"backend": "tensorrt", "reason": "no engine given (--engine M.plan)"})
        else:
            try:
                before, why = device_memory_in_use()  # before the engine allocates anything on the GPU
                trt = load(plan, None)
                backends.append(NamedBackend("tensorrt", trt, device_baseline=before, device_note=why))
                model = model or trt
            except (ZsdError, ImportError, OSError) as e:
                unavailable.append({"backend": "tensorrt", "reason": str(e)})
    for spec in _other_backends(names):
        path = args.model if spec.runs == "onnx" else args.engine or args.model
        if not path:
            unavailable.append({"backend": spec.name, "reason": f"no {spec.runs} file given (--model / --engine)"})
            continue
        try:  # load_backend refuses a file of the other kind with its own message
            other = load(path, args.threads, spec.name)
        except ZsdError as e:
            unavailable.append({"backend": spec.name, "reason": e.problem})
            continue
        backends.append(NamedBackend(spec.name, other))
        model = model or other
    from .latency import parse_ints, parse_sizes, peer_backends  # openvino, openvino-bf16, torch-compile

    peers, missing = peer_backends(names, args.model, threads=args.threads, sizes=parse_sizes(args.sizes),
                                   batches=parse_ints(args.batch, "--batch"), info=model.info if model else None,
                                   int8_model=args.int8_model, msda_model=args.msda_model,
                                   msda_int8_model=args.msda_int8_model,
                                   reference=lambda i: torch_reference(args, i.task if i else (args.task or "panoptic"),
                                                                  i.raw if i else None))
    backends += peers
    unavailable += missing
    model = model or next((p.backend for p in peers if p.name.startswith("openvino")), None)
    info = model.info if model else None
    if "torch" in names or "upstream" in names:
        task = info.task if info else (args.task or "panoptic")
        torch_ref = torch_reference(args, task, info.raw if info else None, info.model if info else "pading")
        if "torch" in names:
            backends.insert(0, NamedBackend("torch", torch_ref))
        if "upstream" in names:  # the research code end to end: torch eager + upstream's torch post-processing
            backends.append(_upstream_post_peer("upstream", torch_ref))
    from .latency import OPENVINO, UPSTREAM_POST_PEER

    if UPSTREAM_POST_PEER in names:  # OpenVINO bf16 used by hand, with upstream's post-processing
        ov = next((p.backend for p in peers if p.name == peer_name(OPENVINO, "bf16")), None)
        if ov is None:
            from .latency import openvino_unavailable

            why = openvino_unavailable("bf16") if args.model and args.model.endswith(".onnx") else "needs --model M.onnx"
            if why:
                unavailable.append({"backend": UPSTREAM_POST_PEER, "reason": why})
            else:
                ov = load(args.model, args.threads, OPENVINO, "bf16")
        if ov is not None:
            backends.append(_upstream_post_peer(UPSTREAM_POST_PEER, ov))
    return backends, unavailable


def _other_backends(names: list[str]) -> list[BackendSpec]:
    """The requested registered backends this module has no code of its own for (onnxruntime, tensorrt and the
    OpenVINO peers have): measured as load_backend opens them."""
    from .latency import OPENVINO

    return [s for s in backend_specs() if s.name in names and s.name not in ("onnxruntime", "tensorrt", OPENVINO)]


def _upstream_post_peer(name: str, backend):
    from .latency import NamedBackend
    from .upstream_post import UpstreamPostSegmenter

    return NamedBackend(name, backend, make_segmenter=lambda policy, task: UpstreamPostSegmenter(backend, task, policy))


def _zegformer_segmenter_factory(args: argparse.Namespace, bundle):
    """policy -> the bundle's ZegFormerSegmenter on its default vocabulary, resized by `policy`."""
    from zsdeploy.runtime.zegformer import ZegFormerSegmenter

    def make(policy, task=None):
        return ZegFormerSegmenter.from_bundle(bundle, bpe_path=args.clip_bpe, task=task,
                                              short_edge=policy.short_edge, max_size=policy.max_size)
    return make


def _zegformer_torch_bundle(args: argparse.Namespace):
    """The bundle with its segmenter (and crop classifier) replaced by PyTorch twins built from the config and
    weights its manifest names (the text encoder stays the bundle's, for vocabularies without stored embeddings)."""
    from zsdeploy.runtime.zegformer import ZegFormerBundle, bundle_root, read_bundle_manifest

    try:
        from zsdeploy.export.torch_backend import TorchBackend
    except ImportError as e:
        raise ZsdError(f"the PyTorch reference needs torch ({e}).", "pip install 'zsdeploy[export]'.") from None
    manifest = read_bundle_manifest(bundle_root(args.model))
    twins = TorchBackend.zegformer(manifest.made_from.as_metadata(), args.weights, args.clip, args.config,
                                   threads=args.threads)
    return ZegFormerBundle(args.model, backends=twins, say=say)


def _zegformer_pair(args: argparse.Namespace, backend_name: str):
    """((name, segmenter backend, factory) of `backend_name`, (same) of the PyTorch twins) for a bundle."""
    from zsdeploy.runtime.zegformer import ZegFormerBundle

    torch_bundle = _zegformer_torch_bundle(args)  # first: a wrong --clip/--weights fails before loading graphs
    bundle = ZegFormerBundle(args.model, threads=args.threads, prefer_engines=backend_name == "tensorrt", say=say)
    return ((backend_name, bundle.segmenter, _zegformer_segmenter_factory(args, bundle)),
            ("torch", torch_bundle.segmenter, _zegformer_segmenter_factory(args, torch_bundle)))


@register_pairing("zegformer")
class BundlePairing(BenchPairing):
    """ZegFormer: the bundle as its ZegFormerSegmenter on its default vocabulary; the reference is the same bundle
    with its segmenter (and crop classifier) replaced by PyTorch twins."""

    def accuracy_pair(self, args: argparse.Namespace, family: ModelFamily) -> tuple[Any, Any, tuple | None]:
        (_, backend, make_be), (_, reference, make_ref) = _zegformer_pair(args, "onnxruntime")
        return backend, reference, (make_be, make_ref)

    def latency_backends(self, args: argparse.Namespace, names: list[str]) -> tuple[list, list[dict[str, str]]]:
        return _zegformer_backends(args, names)


def _zegformer_backends(args: argparse.Namespace, names: list[str]) -> tuple[list, list[dict[str, str]]]:
    """Runners of a ZegFormer bundle: each measured as its ZegFormerSegmenter (segmenter + CLIP crop classifier for
    gzss configs + fusion) on the bundle's default vocabulary; torch = the PyTorch twins of the same graphs."""
    from zsdeploy.runtime.zegformer import ZegFormerBundle, bundle_root, read_bundle_manifest

    from .latency import CPU_DEVICE_NOTE, NamedBackend, device_memory_in_use

    def named(name: str, bundle: ZegFormerBundle, **kw) -> NamedBackend:
        return NamedBackend(name, bundle.segmenter, make_segmenter=_zegformer_segmenter_factory(args, bundle), **kw)

    backends, unavailable = [], []
    if "onnxruntime" in names:
        backends.append(named("onnxruntime", ZegFormerBundle(args.model, threads=args.threads, prefer_engines=False,
                                                             say=say, backend="onnxruntime"),
                              device_note=CPU_DEVICE_NOTE))
    from .latency import OPENVINO, OPENVINO_PEERS, UPSTREAM_POST_PEER, openvino_unavailable

    for name, precision, graph in OPENVINO_PEERS:
        if name not in names or graph != "model":  # the int8 / msda graph variants are PADing exports
            continue
        why = openvino_unavailable(precision)
        if why is None:
            backends.append(named(name, ZegFormerBundle(args.model, threads=args.threads, prefer_engines=False,
                                                        say=say, backend=OPENVINO, precision=precision)))
        else:
            unavailable.append({"backend": name, "reason": why})
    for name in ("torch-compile", "upstream", UPSTREAM_POST_PEER):
        if name in names:
            unavailable.append({"backend": name, "reason": "measured for PADing exports only"})
    for spec in _other_backends(names):
        try:  # load_backend refuses a backend of engines for the bundle's .onnx graphs with its own message
            backends.append(named(spec.name, ZegFormerBundle(args.model, threads=args.threads, prefer_engines=False,
                                                             say=say, backend=spec.name)))
        except ZsdError as e:
            unavailable.append({"backend": spec.name, "reason": e.problem})
    if "tensorrt" in names:
        root = bundle_root(args.model)
        segmenter_onnx = root / read_bundle_manifest(root).graphs["segmenter"].file
        if not segmenter_onnx.with_suffix(".plan").is_file():
            unavailable.append({"backend": "tensorrt", "reason": f"no segmenter.plan in {root} (build-engine "
                                                                  "each bundle graph to <graph>.plan next to it)"})
        else:
            try:
                before, why = device_memory_in_use()
                bundle = ZegFormerBundle(args.model, say=say)
                if bundle.segmenter.name != "tensorrt":
                    raise ZsdError("TensorRT is not available here.", "install TensorRT.")
                backends.append(named("tensorrt", bundle, device_baseline=before, device_note=why))
            except (ZsdError, ImportError, OSError) as e:
                unavailable.append({"backend": "tensorrt", "reason": str(e)})
    if "torch" in names:
        backends.insert(0, named("torch", _zegformer_torch_bundle(args)))
    return backends, unavailable
