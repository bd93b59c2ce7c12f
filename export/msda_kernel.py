"""MSDeformAttn kernel fast path (``zsdeploy.export.msda_kernel``).

Builds the C++/CUDA kernel of ``plugins_trt/msdeformattn`` as a torch extension and exposes it as a plain function:

* CPU tensors run the host build of the kernel core (``msDeformAttnHost.cpp``: the same ``__host__ __device__``
  arithmetic that the CUDA kernel and the TensorRT plugin run), fp32, or fp16 I/O with fp32 math (an emulation of the
  CUDA fp16 path).
* CUDA tensors run the CUDA kernel (``msDeformAttnKernel.cu``), built into a second extension when
  ``torch.cuda.is_available()``.

The extension is compiled on first use (about 25-60 s) with ``torch.utils.cpp_extension.load`` and cached: in
``$TORCH_EXTENSIONS_DIR/<name>`` when that variable is set, else in
``~/.cache/zsdeploy/torch_extensions/<python-torch tag>/<name>`` (``$XDG_CACHE_HOME`` is honoured). torch rebuilds it
when a source file or flag changes.

Environment:
    ZSD_MSDA_KERNEL=0       never build/use the kernel (``kernel_available()`` is False with that reason)
    ZSD_MSDA_SOURCE_DIR     directory holding the kernel sources (default: ``<repo>/plugins_trt/msdeformattn``)
    ZSD_MSDA_VERBOSE=1      show the compiler output while building

``ms_deform_attn_reference`` is the pure-PyTorch definition (grid_sample, bilinear, zeros padding,
align_corners=False) this kernel is tested against.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

__all__ = [
    "KernelUnavailableError",
    "kernel_available",
    "kernel_unavailable_reason",
    "load_extension",
    "ms_deform_attn_forward",
    "ms_deform_attn_reference",
    "source_dir",
]

_EXTENSION_NAMES = {"cpu": "zsdeploy_msda_cpu", "cuda": "zsdeploy_msda_cuda"}
_HOST_SOURCES = ("torch_binding.cpp", "msDeformAttnHost.cpp")
_CUDA_SOURCES = ("msDeformAttnKernel.cu",)
_HEADERS = ("msDeformAttnKernel.cuh", "msDeformAttnKernel.h", "msDeformAttnHost.h")

_lock = threading.Lock()
# variant -> (module or None, reason or None)
_cache: dict[str, tuple[ModuleType | None, str | None]] = {}


class KernelUnavailableError(RuntimeError):
    """The compiled MSDeformAttn kernel cannot be used here; the message says why and what to do."""


def source_dir() -> Path:
    """Directory of the kernel sources: ``ZSD_MSDA_SOURCE_DIR``, ``<repo>/plugins_trt/msdeformattn`` (editable
    installs), else the copy a wheel ships as package data (``zsdeploy/plugins_trt/msdeformattn``)."""
    env = os.environ.get("ZSD_MSDA_SOURCE_DIR")
    if env:
        return Path(env)
    # <repo>/export/.. in a checkout, <site-packages>/zsdeploy/export/.. in a wheel: the same relative path
    return Path(__file__).resolve().parent.parent / "plugins_trt" / "msdeformattn"


def _variant(device: str | torch.device) -> str:
    dev = torch.device(device)
    if dev.type not in _EXTENSION_NAMES:
        raise ValueError(f"MSDeformAttn kernel: no kernel for device type {dev.type!r} (cpu and cuda are supported)")
    return dev.type


def _build_directory(name: str) -> str | None:
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return None  # torch puts it under $TORCH_EXTENSIONS_DIR/<name>
    cache = Path(os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache"))
    cuda = torch.version.cuda
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}" + (
        f"_cu{cuda}" if cuda else "_cpu"
    )
    path = cache / "zsdeploy" / "torch_extensions" / tag.replace("+", "_") / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _precheck(variant: str) -> str | None:
    """Reason why building cannot even start, or None."""
    if os.environ.get("ZSD_MSDA_KERNEL", "1").strip().lower() in ("0", "false", "no", "off"):
        return "disabled by ZSD_MSDA_KERNEL=0"
    src = source_dir()
    needed = _HOST_SOURCES + _HEADERS + (_CUDA_SOURCES if variant == "cuda" else ())
    missing = [f for f in needed if not (src / f).is_file()]
    if missing:
        return (
            f"kernel sources not found in {src} (missing {', '.join(missing)}); run from a source checkout or set "
            "ZSD_MSDA_SOURCE_DIR to plugins_trt/msdeformattn"
        )
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler: {cxx!r} is not on PATH (install g++ or set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not available (pip install ninja, or install the ninja-build package)"
    if variant == "cuda":
        if not torch.cuda.is_available():
            return "torch.cuda.is_available() is False"
        if cpp_extension.CUDA_HOME is None:
            return "CUDA toolkit not found (set CUDA_HOME to a CUDA install that has bin/nvcc)"
        nvcc = Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"
        if not nvcc.exists():
            return f"nvcc not found at {nvcc}"
    return None


def _build(variant: str) -> ModuleType:
    from torch.utils import cpp_extension

    src = source_dir()
    name = _EXTENSION_NAMES[variant]
    sources = [str(src / f) for f in _HOST_SOURCES]
    cflags = ["-O3", "-ffp-contract=off"]
    kwargs: dict = {}
    if variant == "cuda":
        sources += [str(src / f) for f in _CUDA_SOURCES]
        cflags.append("-DZSD_WITH_CUDA")
        kwargs["extra_cuda_cflags"] = ["-O3"]
        kwargs["with_cuda"] = True
    return cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=cflags,
        extra_include_paths=[str(src)],
        build_directory=_build_directory(name),
        verbose=os.environ.get("ZSD_MSDA_VERBOSE", "") not in ("", "0"),
        **kwargs,
    )


def _get(variant: str) -> tuple[ModuleType | None, str | None]:
    with _lock:
        if variant not in _cache:
            reason = _precheck(variant)
            module = None
            if reason is None:
                try:
                    module = _build(variant)
                except Exception as exc:  # noqa: BLE001 - any build failure makes the kernel unavailable
                    text = str(exc).strip().splitlines()
                    tail = " | ".join(text[-8:]) if text else ""
                    reason = f"building the {variant} extension failed: {type(exc).__name__}: {tail}"
            _cache[variant] = (module, reason)
        return _cache[variant]


def load_extension(device: str | torch.device = "cpu") -> ModuleType:
    """Build (first call) and return the extension module for ``device``'s type; raise KernelUnavailableError."""
    variant = _variant(device)
    module, reason = _get(variant)
    if module is None:
        raise KernelUnavailableError(f"MSDeformAttn {variant} kernel unavailable: {reason}")
    return module


def kernel_available(device: str | torch.device = "cpu") -> bool:
    """True when the kernel for ``device``'s type is built and loadable (builds it on the first call).

    When False, ``kernel_unavailable_reason(device)`` says why.
    """
    return _get(_variant(device))[0] is not None


def kernel_unavailable_reason(device: str | torch.device = "cpu") -> str | None:
    """Why ``kernel_available(device)`` is False (None when it is True)."""
    return _get(_variant(device))[1]


def _check_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got {tuple(value.shape)}")
    n, s, m, d = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be [L, 2], got {tuple(spatial_shapes.shape)}")
    num_levels = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(f"level_start_index must be [L={num_levels}], got {tuple(level_start_index.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be [N, Lq, M, L, P, 2], got {tuple(sampling_locations.shape)}")
    sn, lq, sm, sl, p, _ = sampling_locations.shape
    if (sn, sm, sl) != (n, m, num_levels):
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value {tuple(value.shape)} "
            f"and L={num_levels}"
        )
    if tuple(attention_weights.shape) != (n, lq, m, num_levels, p):
        raise ValueError(
            f"attention_weights must be [N, Lq, M, L, P] = {(n, lq, m, num_levels, p)}, "
            f"got {tuple(attention_weights.shape)}"
        )


def ms_deform_attn_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    num_threads: int | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention with the compiled kernel.

    Args:
        value: [N, S, M, D], float32 or float16, S = sum(H_l * W_l).
        spatial_shapes: [L, 2] (H, W), any integer dtype (converted to int32).
        level_start_index: [L], any integer dtype (converted to int32).
        sampling_locations: [N, Lq, M, L, P, 2] normalised (x, y); same dtype as value, or float32 with a float16
            value (the mixed mode of fp16 graphs). Values outside [0, 1] are allowed (zero padding).
        attention_weights: [N, Lq, M, L, P]; same dtype as sampling_locations.
        num_threads: CPU only: worker threads of the kernel library's std::thread runner. None (default) uses
            ``torch.get_num_threads()``; 0 uses the hardware concurrency.

    Returns:
        [N, Lq, M * D] in value's dtype and device. Forward only: raises if autograd would need a gradient.

    Raises:
        KernelUnavailableError: the kernel for this device cannot be built/loaded (message says why).
        ValueError / TypeError: inconsistent shapes, dtypes or devices.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if value.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"MSDeformAttn kernel supports float32 and float16, got {value.dtype}")
    # one dtype for all three, or the mixed mode of fp16 graphs: fp16 value, fp32 locations and weights
    mixed = value.dtype == torch.float16 and sampling_locations.dtype == torch.float32
    if attention_weights.dtype != sampling_locations.dtype or (sampling_locations.dtype != value.dtype and not mixed):
        raise TypeError(
            "value, sampling_locations and attention_weights must share one dtype (or be fp16 value with fp32 "
            f"locations and weights), got {value.dtype}, {sampling_locations.dtype}, {attention_weights.dtype}"
        )
    if spatial_shapes.is_floating_point() or level_start_index.is_floating_point():
        raise TypeError("spatial_shapes and level_start_index must be integer tensors")
    devices = {t.device for t in (value, sampling_locations, attention_weights)}
    if len(devices) != 1:
        raise ValueError(f"value, sampling_locations and attention_weights must be on one device, got {devices}")
    if torch.is_grad_enabled() and any(
        t.requires_grad for t in (value, sampling_locations, attention_weights)
    ):
        raise RuntimeError(
            "ms_deform_attn_forward is forward-only (no backward); call it under torch.no_grad() or use "
            "ms_deform_attn_reference for gradients"
        )
    ext = load_extension(value.device)
    dev = value.device
    if num_threads is None:
        num_threads = torch.get_num_threads()
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 or None, got {num_threads}")
    return ext.forward(
        value.contiguous(),
        spatial_shapes.to(device=dev, dtype=torch.int32).contiguous(),
        level_start_index.to(device=dev, dtype=torch.int32).contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        int(num_threads),
    )


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Pure-PyTorch MSDeformAttn: per level F.grid_sample(value_l, 2 * loc - 1, bilinear, zeros, align_corners=False).

    Computes in the input dtype (pass float64 tensors for an fp64 reference). Returns [N, Lq, M * D].
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    grids = 2 * sampling_locations - 1
    out = value.new_zeros(n * m, d, lq)
    for lvl in range(num_levels):
        (h, w), start = shapes[lvl], starts[lvl]
        # [N, H*W, M, D] -> [N*M, D, H, W]
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(n * m, lq, p, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N*M, D, Lq, P]
        a = attention_weights[:, :, :, lvl].permute(0, 2, 1, 3).reshape(n * m, 1, lq, p)
        out = out + (sampled * a).sum(-1)
    return out.view(n, m, d, lq).permute(0, 3, 1, 2).reshape(n, lq, m * d)
