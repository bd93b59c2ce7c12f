"""The builder's progress, printed while TensorRT builds (TensorRT >= 10: IProgressMonitor)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .loader import Say

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["make_progress_monitor"]


def make_progress_monitor(say: Say) -> trt.IProgressMonitor:
    """Print the builder's top phases (steps at most every 10 s). Only where `TensorRTCaps.progress_monitor`."""
    import tensorrt as trt

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.steps: dict[str, int] = {}
            self.started: dict[str, float] = {}
            self.last_print = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.steps[phase_name] = num_steps
            self.started[phase_name] = time.perf_counter()
            if self.depth[phase_name] <= 1:  # deeper phases are per-layer chatter
                say(f"  {'  ' * self.depth[phase_name]}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.perf_counter()
            if self.depth.get(phase_name, 0) == 0 and now - self.last_print > 10:
                self.last_print = now
                say(f"    {phase_name}: step {step + 1}/{self.steps.get(phase_name, '?')}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            if self.depth.get(phase_name, 0) <= 1:
                took = time.perf_counter() - self.started.get(phase_name, time.perf_counter())
                say(f"  {'  ' * self.depth.get(phase_name, 0)}{phase_name}: done in {took:.1f} s")

    return Monitor()
