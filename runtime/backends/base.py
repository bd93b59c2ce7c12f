"""The runner interface every backend implements, and the options load_backend opens one with."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts.onnx_metadata import ModelInfo


@dataclass(frozen=True)
class BackendOptions:
    """What load_backend hands every backend's `from_options` (each backend uses the fields it has a use for)."""

    precision: str = "fp32"  # a runtime precision (options.RUNTIME_PRECISIONS), already normalised
    threads: int | None = None  # CPU threads
    streams: int | None = None  # OpenVINO NUM_STREAMS
    plugin_lib: str | None = None  # TensorRT plugin library for engines with plugin nodes
    cache_dir: str | os.PathLike | bool | None = None  # OpenVINO's compiled-model cache (None = default, False = none)
    say: Callable[[str], None] | None = None  # notes (default: stderr)


class Backend(ABC):
    """One loaded model: named numpy inputs in, named numpy outputs out."""

    name: str = "backend"
    info: ModelInfo
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @classmethod
    def from_options(cls, path: Path, options: BackendOptions) -> Backend:
        """How load_backend opens this backend (its BackendSpec in registry.py names the class): the constructor
        called with the fields of `options` it takes. The default passes the path only."""
        return cls(path)  # type: ignore[call-arg]  # a subclass's constructor takes the path

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
