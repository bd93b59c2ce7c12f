"""The runner interface every backend implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..artifacts.onnx_metadata import ModelInfo


class Backend(ABC):
    """One loaded model: named numpy inputs in, named numpy outputs out."""

    name: str = "backend"
    info: ModelInfo
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; feeds are float32 C-contiguous arrays keyed by input name."""

    @abstractmethod
    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        """Declared shape of an input; symbolic dims as strings or None."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release device memory / sessions."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
