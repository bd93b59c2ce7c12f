"""The PyTorch reference behind the runtime's Backend interface, so benchmarks and tests compare backends
through the very same pre- and post-processing."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..runtime.backends.base import Backend
from ..runtime.artifacts.onnx_metadata import ExportRecord, ModelInfo
from .models.msdeformattn import lowering
from .onnx_export import ExportShape


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: torch.nn.Module, metadata: ExportRecord | Mapping[str, str], *, msda: str = "op",
                 threads: int | None = None) -> None:
        self.model = model.eval()
        meta = metadata.as_strings() if isinstance(metadata, ExportRecord) else dict(metadata)
        self.info = ModelInfo.from_metadata(meta, "torch model")
        # Graphs with more inputs (ZegFormer: text embeddings, crop-classifier inputs) name them in the metadata.
        self.input_names = tuple(json.loads(meta["input_names"])) if "input_names" in meta else ("images",)
        self.output_names = (tuple(json.loads(meta["output_names"])) if "output_names" in meta
                             else ("class_logits", "mask_logits"))
        self.msda = msda
        if threads:
            torch.set_num_threads(threads)

    @classmethod
    def pading(cls, task: str, config: str | Path | None = None, weights: str | Path | None = None,
               standin: str = "golden", **kwargs) -> TorchBackend:
        """PADing from a checkpoint, or the `standin` variant of the stand-in weights (the one the export used:
        see `runtime.artifacts.onnx_metadata.standin_variant_of`)."""
        from .pading_export import build_pading, pading_metadata

        built = build_pading(task, config, weights, standin=standin)
        meta = pading_metadata(built, ExportShape(dynamic=True), opset=0, msda="torch")
        return cls(built.model, meta, **kwargs)

    @classmethod
    def zegformer(cls, bundle_meta: dict[str, str], weights: str | os.PathLike | None = None,
                  clip: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                  **kwargs) -> dict[str, TorchBackend]:
        """PyTorch twins of a ZegFormer bundle's segmenter and (gzss) crop classifier, built from the config the
        bundle names and the same weights: a checkpoint (+ CLIP file), or the stand-ins when the bundle says so."""
        from ..runtime.errors import ZsdError
        from .models.zegformer_clip import CLIPCropClassifier
        from .zegformer_export import build_zegformer, zegformer_metadata

        if weights is None and bundle_meta.get("standin_weights") != "true":
            raise ZsdError("this bundle was exported from a checkpoint; the PyTorch reference needs the same one.",
                           "pass --weights model_final.pth (and --clip ViT-B-16.pt unless it is a gzss checkpoint).")
        if weights is None and clip is None and bundle_meta.get("standin_clip") != "true":
            raise ZsdError(f"this bundle's CLIP came from {bundle_meta.get('clip_weights', 'a file')}; the PyTorch "
                           "reference needs the same file.", "pass --clip with that file.")
        if config is None:
            from .zegformer_export import RELEASED_CONFIGS

            recorded = bundle_meta.get("config", "")
            config = recorded.removesuffix(".yaml")
            if config not in RELEASED_CONFIGS:
                raise ZsdError(f"the bundle was exported with config {recorded!r}, which is not a released one; the "
                               "reference cannot rebuild it from the name.", "pass --config with that YAML file.")
        built = build_zegformer(config, weights, clip)
        shape = ExportShape(dynamic=True)
        out = {"segmenter": cls(built.model, zegformer_metadata(built, shape, graph="segmenter", opset=0), **kwargs)}
        if built.settings.clip_classification:
            s = built.settings
            crop = CLIPCropClassifier(built.clip, s.clip_pixel_mean, s.clip_pixel_std)
            out["crop_classifier"] = cls(crop, zegformer_metadata(built, shape, graph="crop_classifier", opset=0),
                                         **kwargs)
        return out

    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        return ("batch", 3, "height", "width") if name == "images" else ()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with torch.inference_mode(), lowering(self.msda):
            outs = self.model(*args)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return {n: o.numpy() for n, o in zip(self.output_names, outs)}
