"""ONNX Runtime backend (CPU execution provider; CUDA EP when the installed onnxruntime has it)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ZsdError
from ..artifacts.onnx_metadata import ModelInfo, read_onnx_metadata
from .base import Backend, BackendOptions


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    @classmethod
    def from_options(cls, path: Path, options: BackendOptions) -> OnnxRuntimeBackend:
        return cls(path, threads=options.threads)

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        self.info = ModelInfo.from_metadata(read_onnx_metadata(path), str(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        elif os.environ.get("OMP_NUM_THREADS"):
            options.intra_op_num_threads = int(os.environ["OMP_NUM_THREADS"])
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own Fail/InvalidGraph types)
            msg = str(e).splitlines()[0][:300]
            hint = ("this graph contains TensorRT plugin nodes (exported with --msda plugin/nvidia); ONNX Runtime "
                    "cannot run them. Run it with --backend openvino (zsdeploy's OpenVINO extension runs them on "
                    "CPUs), build an engine with build-engine, or export with --msda gridsample for ONNX Runtime.") if "MSDeformAttn" in msg or "MultiscaleDeformable" in msg else \
                "re-export the model with export-model."
            raise ZsdError(f"ONNX Runtime cannot load {path}: {msg}.", hint) from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self.providers = self.session.get_providers()

    def input_shape(self, name: str) -> tuple[int | str | None, ...]:
        return self._shapes[name]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.input_names, self._shapes)
        outputs = self.session.run(list(self.output_names), {k: np.ascontiguousarray(feeds[k]) for k in self.input_names})
        return dict(zip(self.output_names, outputs))


def check_feeds(feeds: dict[str, np.ndarray], input_names: tuple[str, ...],
                shapes: dict[str, tuple[int | str | None, ...]]) -> None:
    """Every input given, every static dim matching (shared by the ONNX Runtime and OpenVINO runners)."""
    for name in input_names:
        if name not in feeds:
            raise ZsdError(f"input {name!r} was not given.", f"feed {list(input_names)}.")
        check_shape(name, feeds[name].shape, shapes[name])


def check_shape(name: str, got: tuple[int, ...], declared: tuple[int | str | None, ...]) -> None:
    """Static dims must match exactly; a clear message instead of an ONNX Runtime stack dump."""
    if len(got) != len(declared) or any(isinstance(d, int) and d != g for g, d in zip(got, declared)):
        raise ZsdError(
            f"input {name!r} has shape {list(got)} but the model was exported for {list(declared)}.",
            "resize/pad the input to that shape (trt-infer does this), or re-export with export-model --dynamic "
            "or with matching --height/--width/--batch.",
        )
