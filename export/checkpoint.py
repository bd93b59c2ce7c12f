"""detectron2-style checkpoints (.pth from DetectionCheckpointer, .pkl model-zoo pickles), loaded without
executing code, with every key accounted for: used by the model, or on an explicit training-only drop list."""
from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime.errors import ZsdError

# Keys present in the released PADing checkpoints that inference never reads (see UPSTREAM_PADING.md).
PADING_TRAINING_ONLY = (
    "criterion.", "fc_projection.", "dict_feature.", "generator.", "projection_related.",
    "projection_unrelated.", "relation.", "decoder.", "sem_seg_head.predictor.class_embed.",
)

# numpy objects a detectron2 .pkl may hold; nothing else is constructed while unpickling.
_PKL_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """What a protocol-2 pickle written by Python 3 calls to rebuild an array's raw bytes (`_codecs.encode(text,
    "latin1")`); any other codec is refused, so the allowance cannot become a general function call."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in _PKL_ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


@dataclass
class LoadReport:
    path: str
    sha256: str
    used: int
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    from ..runtime.files import file_sha256

    return file_sha256(path)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw `{key: tensor}` of a .pth/.pkl checkpoint (the 'model' entry when present)."""
    path = Path(path)
    if not path.is_file():
        raise ZsdError(f"checkpoint {path} does not exist.", "pass the path of a trained model with --weights.")
    obj = _load_untrusted(path)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ZsdError(f"{path} holds no state dict (found {type(obj).__name__}).",
                       "pass a detectron2 checkpoint: a dict with a 'model' entry of parameter tensors.")
    out: dict[str, torch.Tensor] = {}
    bad = []
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
        elif isinstance(v, np.ndarray):
            out[str(k)] = torch.from_numpy(np.ascontiguousarray(v))
        else:
            bad.append(str(k))
    if bad:
        raise ZsdError(f"{path} has non-tensor entries in its state dict: {summarize_keys(bad)}.",
                       "pass a checkpoint whose 'model' entry maps names to tensors/arrays.")
    return out


def _load_untrusted(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        torch_error = e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        # Not a torch archive: maybe a detectron2 model-zoo .pkl (plain pickle of numpy arrays).
        torch_error = e
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "is not allowed" in str(e) or "Unsupported global" in str(torch_error) or "weights_only" in str(torch_error):
            raise ZsdError(
                f"{path} is a pickle that would construct or call arbitrary Python objects ({e}); "
                "zsdeploy loads checkpoints with weights_only=True and refuses to execute code from a file.",
                "if you trust the file, re-save its state dict with torch.save({'model': sd}, 'clean.pth').",
            ) from None
        raise ZsdError(f"{path} is not a readable checkpoint ({torch_error}).",
                       "check the file is complete (re-download it) and is a detectron2 .pth or .pkl.") from None
    except (EOFError, OSError, ValueError, IndexError, TypeError, AttributeError) as e:
        raise ZsdError(f"{path} is corrupt or truncated ({type(e).__name__}: {e}; torch said: {torch_error}).",
                       "re-download or re-save the checkpoint; it must be a detectron2 .pth or .pkl.") from None


def summarize_keys(keys: Sequence[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def key_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                 unexpected: Sequence[str]) -> list[str]:
    """Missing keys, the given unexpected keys and keys of the wrong shape, each summarised for an error message."""
    missing = [k for k in expected if k not in state]
    wrong_shape = [f"{k} {tuple(state[k].shape)} (model expects {tuple(v.shape)})"
                   for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {summarize_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {summarize_keys(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} key(s) of the wrong shape: {summarize_keys(wrong_shape)}")
    return problems


def load_into(model: nn.Module, path: str | Path, drop_prefixes: Sequence[str]) -> LoadReport:
    """Load a checkpoint strictly: every key must be used or dropped on purpose; names the offenders."""
    path = Path(path)
    state = read_state_dict(path)
    notes = []
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("stripped the 'module.' prefix (DistributedDataParallel checkpoint)")
    expected = model.state_dict()
    dropped = [k for k in state if k not in expected and k.startswith(tuple(drop_prefixes))]
    unexpected = [k for k in state if k not in expected and not k.startswith(tuple(drop_prefixes))]
    problems = key_problems(state, expected, unexpected)
    if problems:
        raise ZsdError(
            f"checkpoint {path} does not match the model built from the config: " + "; ".join(problems) + ".",
            "pass the config the checkpoint was trained with (--config / --task: the class count must match), "
            "or the checkpoint that belongs to this config.",
        )
    model.load_state_dict(OrderedDict((k, state[k].to(v.dtype)) for k, v in expected.items()), strict=True)
    return LoadReport(str(path), sha256_of(path), used=len(expected), dropped=sorted(dropped), notes=notes)
