"""Translation of the MSDeformAttn custom op for the `plugin` and `nvidia` lowerings (see DESIGN.md).

`gridsample` needs none: it inlines the reference formulation while tracing.
"""
from __future__ import annotations


def custom_translations(msda: str) -> dict | None:
    if msda == "gridsample":
        return None
    from ..runtime.errors import ZsdError

    raise ZsdError(f"--msda {msda} is not available in this build yet.", "use --msda gridsample.")
