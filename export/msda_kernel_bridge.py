"""Finds the compiled MSDeformAttn kernel (host build or CUDA) for the custom op's eager fast path.

Kept separate from the model so importing the model never triggers a compiler run; the kernel is used only
when the user (or a test) asks for it with `enable_fast_kernel()`.
"""
from __future__ import annotations

from collections.abc import Callable

_fast: Callable | None = None


def enable_fast_kernel() -> bool:
    """Build/load the compiled kernel; returns False (reference stays in use) when it cannot be built."""
    global _fast
    from . import msda_kernel

    if not msda_kernel.kernel_available():
        return False
    _fast = msda_kernel.ms_deform_attn_forward
    return True


def fast_kernel() -> Callable | None:
    return _fast
