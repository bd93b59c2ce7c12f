"""Class lists shipped in configs/classes and their choice for a model config."""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..runtime.artifacts.onnx_metadata import ClassFacts
from .config import CONFIG_DIR

# Released PADing models: task -> class list file.
PADING_CLASS_LISTS = {"panoptic": "coco_panoptic_133", "instance": "coco_zsi_65", "semantic": "coco_stuff_171"}


@dataclass(frozen=True)
class ClassList:
    names: tuple[str, ...]
    isthing: tuple[bool, ...]
    unseen: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]
    source: str

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.isthing) if t)

    @property
    def seen(self) -> tuple[int, ...]:
        unseen = set(self.unseen)
        return tuple(i for i in range(len(self.names)) if i not in unseen)

    def facts(self, note: str | None = None) -> ClassFacts:
        """This list as an export records it (`note`: why the names are generic, when they are)."""
        return ClassFacts(self.names, self.colors, self.source, self.thing_ids, self.seen, self.unseen, note or "")


def load_class_list(name: str) -> ClassList:
    data = json.loads((CONFIG_DIR / "classes" / f"{name}.json").read_text(encoding="utf-8"))
    n = len(data["names"])
    return ClassList(
        names=tuple(data["names"]),
        isthing=tuple(bool(t) for t in data.get("isthing", [True] * n)),
        unseen=tuple(int(i) for i in data.get("unseen", [])),
        colors=tuple(tuple(c) for c in data.get("colors", [])),
        source=f"configs/classes/{name}.json",
    )


def classes_for(task: str, num_classes: int) -> tuple[ClassList, str | None]:
    """The released list for `task` when its size matches, else generic names (and a note saying so)."""
    released = load_class_list(PADING_CLASS_LISTS[task])
    if len(released.names) == num_classes:
        return released, None
    # A 133-class model (the demo model) predicts COCO-panoptic classes for every task.
    panoptic = load_class_list(PADING_CLASS_LISTS["panoptic"])
    if len(panoptic.names) == num_classes:
        return panoptic, None
    generic = ClassList(tuple(f"class_{i}" for i in range(num_classes)), (True,) * num_classes, (), (), "generic")
    note = (f"the config has {num_classes} classes but the released {task} list has {len(released.names)}; "
            "class names are written as class_<i>")
    return generic, note
