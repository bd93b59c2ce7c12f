"""Triton `config.pbtxt` text (protobuf text format of inference.ModelConfig), written without protobuf so the
repository writer needs no Triton packages. Tests parse every file back with tritonclient's model_config_pb2."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

#: numpy-ish names -> Triton data types used by the repository.
TYPES = {"fp32": "TYPE_FP32", "int32": "TYPE_INT32", "bytes": "TYPE_STRING"}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # a key of TYPES
    dims: tuple[int, ...]  # without the batch dim; -1 = variable
    optional: bool = False  # inputs only: a request may leave it out

    def text(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        opt = " optional: true" if self.optional else ""
        return f'  {{ name: {json.dumps(self.name)} data_type: {TYPES[self.dtype]} dims: [ {dims} ]{opt} }}'


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    inputs: dict[str, str]  # the step model's tensor -> ensemble tensor
    outputs: dict[str, str]


@dataclass
class ModelConfig:
    name: str
    max_batch_size: int
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    backend: str | None = None  # "python", "onnxruntime", "openvino"
    platform: str | None = None  # "tensorrt_plan", "ensemble"
    default_model_filename: str | None = None
    instance_count: int | None = None
    instance_kind: str = "KIND_CPU"
    dynamic_batching: bool = False
    max_queue_delay_us: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    steps: Sequence[EnsembleStep] = ()

    def text(self) -> str:
        q = json.dumps
        lines = [f"name: {q(self.name)}"]
        if self.platform:
            lines.append(f"platform: {q(self.platform)}")
        if self.backend:
            lines.append(f"backend: {q(self.backend)}")
        if self.default_model_filename:
            lines.append(f"default_model_filename: {q(self.default_model_filename)}")
        lines.append(f"max_batch_size: {self.max_batch_size}")
        lines.append("input [\n" + ",\n".join(t.text() for t in self.inputs) + "\n]")
        lines.append("output [\n" + ",\n".join(t.text() for t in self.outputs) + "\n]")
        if self.instance_count is not None:
            lines.append(f"instance_group [ {{ count: {self.instance_count} kind: {self.instance_kind} }} ]")
        if self.dynamic_batching:
            lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {self.max_queue_delay_us} }}")
        for k, v in self.parameters.items():
            lines.append(f"parameters {{ key: {q(k)} value: {{ string_value: {q(v)} }} }}")
        if self.steps:
            steps = []
            for s in self.steps:
                maps = [f"      input_map {{ key: {q(k)} value: {q(v)} }}" for k, v in s.inputs.items()]
                maps += [f"      output_map {{ key: {q(k)} value: {q(v)} }}" for k, v in s.outputs.items()]
                steps.append(f"    {{\n      model_name: {q(s.model)}\n      model_version: -1\n"
                             + "\n".join(maps) + "\n    }")
            lines.append("ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}")
        return "\n".join(lines) + "\n"
