"""The PyTorch reference behind the runtime's Backend interface, so benchmarks and tests compare backends
through the very same pre- and post-processing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..runtime.backends.base import Backend
from ..runtime.metadata import ModelInfo
from .models.msdeformattn import lowering
from .onnx_export import ExportShape


def standin_variant_of(metadata: dict[str, str]) -> str:
    """The stand-in variant an export was made with; exports older than the key used the golden rule."""
    return metadata.get("standin_variant") or "golden"


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: torch.nn.Module, metadata: dict[str, object], *, msda: str = "op",
                 threads: int | None = None) -> None:
        self.model = model.eval()
        meta = {k: v if isinstance(v, str) else __import__("json").dumps(v) for k, v in metadata.items()}
        self.info = ModelInfo.from_metadata(meta, "torch model")
        self.input_names = ("images",)
        self.output_names = ("class_logits", "mask_logits")
        self.msda = msda
        if threads:
            torch.set_num_threads(threads)

    @classmethod
    def pading(cls, task: str, config: str | Path | None = None, weights: str | Path | None = None,
               standin: str = "golden", **kwargs) -> TorchBackend:
        """PADing from a checkpoint, or the `standin` variant of the stand-in weights (the one the export used:
        see `standin_variant_of`)."""
        from .pading_export import build_pading, pading_metadata

        built = build_pading(task, config, weights, standin=standin)
        meta = pading_metadata(built, ExportShape(dynamic=True), opset=0, msda="torch")
        return cls(built.model, meta, **kwargs)

    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        return ("batch", 3, "height", "width")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode(), lowering(self.msda):
            outs = self.model(torch.from_numpy(np.ascontiguousarray(feeds["images"])))
        return {n: o.numpy() for n, o in zip(self.output_names, outs)}
