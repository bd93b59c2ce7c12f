"""The Python-backend models of a zsdeploy Triton repository (imported by the generated model.py files inside
Triton's Python stub; `triton_python_backend_utils` exists only there).

Every request gets its own response: a bad request (undecodable image, image too large, ...) gets a Triton error
with zsdeploy's one-paragraph message and the model keeps serving the others."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from ..errors import ZsdError
from ..pipeline import Pipeline
from . import steps


def _version_dir(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


def _error(e: BaseException) -> Any:
    if isinstance(e, ZsdError):
        return pb_utils.TritonError(f"zsdeploy: {e}")
    pb_utils.Logger.log_error(f"zsdeploy: unexpected {type(e).__name__}: {e}")
    return pb_utils.TritonError(f"zsdeploy: internal error ({type(e).__name__}: {e})")


def _respond(requests: list[Any], handle: Callable[[Any], list[Any]]) -> list[Any]:
    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except Exception as e:  # noqa: BLE001 - one request's failure must not take the model down
            responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(e)))
    return responses


def _input(request: Any, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class PreprocessModel:
    """IMAGE (encoded bytes, [B,1]) -> images float32 [B,3,H,W] + image_info int32 [B,6]."""

    def initialize(self, args: dict[str, Any]) -> None:
        info, task = steps.read_step_file(_version_dir(args) / "zsdeploy_step.json")
        self.seg = steps.step_segmenter(info, task)

    def execute(self, requests: list[Any]) -> list[Any]:
        def handle(request: Any) -> list[Any]:
            blobs = [bytes(b) for b in _input(request, "IMAGE").reshape(-1)]
            images, info = steps.preprocess_request(self.seg, blobs)
            return [pb_utils.Tensor("images", images), pb_utils.Tensor("image_info", info)]

        return _respond(requests, handle)


class NetworkModel:
    """images -> class_logits, mask_logits through zsdeploy's own backend (ONNX Runtime for .onnx, TensorRT for
    .plan): for Triton builds without a native backend for the model (e.g. the nvidia-pytriton wheel)."""

    def initialize(self, args: dict[str, Any]) -> None:
        from ..backends import load_backend

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params["threads"]) if params.get("threads") else None
        if threads is None and os.environ.get("OMP_NUM_THREADS"):
            threads = int(os.environ["OMP_NUM_THREADS"])
        model = _version_dir(args) / params["model_file"]
        # A Pipeline around the real backend: run_network fills a static batch exactly as trt-infer does.
        self.seg = Pipeline(load_backend(model, threads=threads))

    def finalize(self) -> None:
        self.seg.backend.close()

    def execute(self, requests: list[Any]) -> list[Any]:
        def handle(request: Any) -> list[Any]:
            cls, masks = steps.run_network(self.seg, _input(request, "images"))
            return [pb_utils.Tensor("class_logits", np.ascontiguousarray(cls, np.float32)),
                    pb_utils.Tensor("mask_logits", np.ascontiguousarray(masks, np.float32))]

        return _respond(requests, handle)


class PostprocessModel:
    """class_logits, mask_logits, image_info -> id_map int32 [B,H,W] (-1 outside image i) + segments (JSON)."""

    def initialize(self, args: dict[str, Any]) -> None:
        info, task = steps.read_step_file(_version_dir(args) / "zsdeploy_step.json")
        self.seg = steps.step_segmenter(info, task)

    def execute(self, requests: list[Any]) -> list[Any]:
        def handle(request: Any) -> list[Any]:
            id_map, docs = steps.postprocess_request(self.seg, _input(request, "class_logits"),
                                                     _input(request, "mask_logits"), _input(request, "image_info"))
            return [pb_utils.Tensor("id_map", id_map),
                    pb_utils.Tensor("segments", np.array(docs, dtype=np.object_).reshape(-1, 1))]

        return _respond(requests, handle)


class ZegFormerModel:
    """A ZegFormer bundle with a vocabulary per request: IMAGE (encoded bytes, [N,1]) + CLASSES (optional, one
    string of comma-separated names) -> id_map int32 [N,H,W] (class index in the request's vocabulary, -1 outside
    image i), scores float32 [N,H,W] (that class's score; NaN outside image i), segments (trt-infer's JSON).

    One Python-backend model runs the whole pipeline instead of an ensemble pre -> network -> post: the network
    takes the vocabulary's text embeddings as an input, and those come from the request's CLASSES through the text
    encoder and this process's vocabulary cache; splitting it would send [C,512] embeddings (and CLIP's crop
    classifier inputs) between models for every request, and the cache would need its own stateful model."""

    def initialize(self, args: dict[str, Any]) -> None:
        from .zegformer_steps import ZegFormerService, ZegFormerStep

        version = _version_dir(args)
        self.service = ZegFormerService(version, ZegFormerStep.read(version / "zsdeploy_step.json"),
                                        say=lambda m: pb_utils.Logger.log_info(f"zsdeploy: {m}"))
        try:  # the default vocabulary ready before the first request (stored embeddings: no BPE file needed)
            self.service.segmenter_for(None)
        except ZsdError as e:
            pb_utils.Logger.log_warn(f"zsdeploy: the default vocabulary is not ready ({e}); requests without "
                                     "CLASSES will get this error.")

    def finalize(self) -> None:
        self.service.close()

    def execute(self, requests: list[Any]) -> list[Any]:
        from .zegformer_steps import CLASSES_INPUT, parse_request_classes

        def handle(request: Any) -> list[Any]:
            blobs = [bytes(b) for b in _input(request, "IMAGE").reshape(-1)]
            classes = pb_utils.get_input_tensor_by_name(request, CLASSES_INPUT)
            names = parse_request_classes(None if classes is None else classes.as_numpy(),
                                          self.service.step.max_classes)
            id_map, scores, docs = self.service.segment(blobs, names)
            return [pb_utils.Tensor("id_map", id_map), pb_utils.Tensor("scores", scores),
                    pb_utils.Tensor("segments", np.array(docs, dtype=np.object_).reshape(-1, 1))]

        return _respond(requests, handle)
