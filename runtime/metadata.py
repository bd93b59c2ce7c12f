"""Typed view of the metadata an exported artifact carries (ONNX metadata_props or an engine's JSON sidecar)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import ZsdError

REQUIRED_KEYS = ("model", "task", "num_classes", "class_names", "pixel_mean", "min_size_test", "max_size_test",
                 "size_divisibility", "dynamic")


@dataclass(frozen=True)
class ModelInfo:
    raw: dict[str, str]
    model: str
    task: str
    num_classes: int
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    thing_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    seen_ids: tuple[int, ...]
    pixel_mean: tuple[float, float, float]
    min_size_test: int
    max_size_test: int
    size_divisibility: int
    dynamic: bool
    static_batch: int | None
    static_hw: tuple[int, int] | None
    standin_weights: bool

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> ModelInfo:
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ZsdError(
                f"{source} carries no zsdeploy metadata (missing: {', '.join(missing)}); the runtime cannot know "
                "its classes, resize policy and thresholds.",
                "export the model with `export-model` (or build the engine from such an ONNX with `build-engine`), "
                "which writes this metadata.",
            )
        try:
            dynamic = meta["dynamic"] == "true"
            return cls(
                raw=dict(meta),
                model=meta["model"],
                task=meta["task"],
                num_classes=int(meta["num_classes"]),
                class_names=tuple(json.loads(meta["class_names"])),
                class_colors=tuple(tuple(c) for c in json.loads(meta.get("class_colors", "[]"))),
                thing_ids=tuple(json.loads(meta.get("thing_ids", "[]"))),
                unseen_ids=tuple(json.loads(meta.get("unseen_ids", "[]"))),
                seen_ids=tuple(json.loads(meta["seen_ids"])) if "seen_ids" in meta else tuple(
                    i for i in range(int(meta["num_classes"]))
                    if i not in set(json.loads(meta.get("unseen_ids", "[]")))),
                pixel_mean=tuple(json.loads(meta["pixel_mean"])),
                min_size_test=int(meta["min_size_test"]),
                max_size_test=int(meta["max_size_test"]),
                size_divisibility=int(meta["size_divisibility"]),
                dynamic=dynamic,
                static_batch=None if dynamic else int(meta.get("static_batch") or 1),
                static_hw=None if dynamic else (int(meta["static_height"]), int(meta["static_width"])),
                standin_weights=meta.get("standin_weights") == "true",
            )
        except (ValueError, KeyError, json.JSONDecodeError) as e:
            raise ZsdError(f"{source} has malformed zsdeploy metadata ({type(e).__name__}: {e}).",
                           "re-export the model with this version of export-model.") from None


def standin_variant_of(metadata: dict[str, str]) -> str:
    """The stand-in weight variant an export was made with; exports older than the key used the golden rule."""
    return metadata.get("standin_variant") or "golden"
