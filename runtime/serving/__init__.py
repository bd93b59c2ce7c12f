"""Serving zsdeploy models with NVIDIA Triton Inference Server (torch-free).

`write_repository` turns a PADing export (.onnx / .plan) into a Triton model repository: an ensemble
pre-processing -> network -> post-processing whose Python steps call zsdeploy.runtime, so served results equal
trt-infer's. A ZegFormer bundle becomes one Python-backend model that takes the vocabulary with each request. `local_server` starts the `tritonserver` binary shipped in the nvidia-pytriton wheel (tests, demos).
"""
from .repository import BACKENDS, RepositoryOptions, write_repository

__all__ = ["BACKENDS", "RepositoryOptions", "write_repository"]
