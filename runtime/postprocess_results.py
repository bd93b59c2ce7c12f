"""Result containers of `postprocess` that stay small at any image size, yet read like the upstream arrays.

Upstream returns `sem_seg` as a float [K, H, W] score map and instance `pred_masks` as bool [N, H, W]; at
12 MP with K=133 that is 6.4 GB and 1.2 GB. Here:

- `SemanticScores` keeps the network outputs and computes score rows band by band when asked:
  `argmax(0)` / `max(0)` stream (memory: one band plus the [H, W] answer); `np.asarray(sem)` or
  `sem[channels]` materialise what was asked for (a few channels are cheap; all of them is upstream's array).
- `PackedMasks` stores the binary masks bit-packed (H*W/8 bytes per kept query); `masks[i]` unpacks one.

Both support numpy conversion (`np.asarray`, arithmetic with arrays), `.shape`, `.dtype`, `len()`, iteration
and indexing along the first axis, so code written for the arrays keeps working.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["SemanticScores", "PackedMasks"]

# band function: (channels [K'] int array, r0, r1) -> float32 scores [r1-r0, K', W] (rows first)
BandFn = Callable[[np.ndarray, int, int], np.ndarray]
# band planner: (channels count) -> iterator of (r0, r1)
PlanFn = Callable[[int], Iterator[tuple[int, int]]]


class SemanticScores:
    """Lazy semantic score map [K, H, W] float32 (sem_seg), computed in row bands on demand.

    A channel selection (`sem[[3, 5]]`, `sem[2:7]`) is a lazy view sharing the per-class offsets, so the
    in-place idiom `sem[seen_ids] -= c` (ZegFormer's gzero calibration, applied after the resize as upstream)
    shifts those classes without computing anything; other writes are refused (take `np.asarray(sem)`).
    """

    __array_priority__ = 20.0  # ndarray (op) SemanticScores defers to our reflected operators -> __array__

    def __init__(self, shape: tuple[int, int, int], band: BandFn, plan: PlanFn, *,
                 channels: np.ndarray | None = None, offsets: np.ndarray | None = None) -> None:
        k, h, w = (int(v) for v in shape)
        self._full_k = k
        self._band, self._plan = band, plan
        self._channels = np.arange(k) if channels is None else np.asarray(channels, np.int64)
        self._offsets = np.zeros(k, np.float32) if offsets is None else offsets  # shared with views
        self._hw = (h, w)
        self._labels: tuple[bytes, np.ndarray] | None = None  # (offsets it was computed with, compact label map)

    def compute_labels(self) -> "SemanticScores":
        """Compute and keep the label map now (what every consumer needs; `postprocess` calls this so its time
        is post-processing time). Kept compactly (uint8/uint16 for K < 256/65536); an in-place class offset
        made later invalidates it."""
        self._labels = None
        self._labels = (self._offsets.tobytes(), self._reduce(0, "argmax", compact=True))
        return self

    # ---- array-like surface
    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self._channels), *self._hw)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self._channels)

    def __repr__(self) -> str:
        return f"SemanticScores(shape={self.shape}, lazy float32 sem_seg computed in row bands)"

    def bands(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(r0, r1, scores float32 [K', r1-r0, W]) covering the map; one band in memory at a time."""
        off = self._offsets[self._channels]  # additive per-class offsets (a + (-g) == a - g exactly in IEEE)
        shift = bool(off.any())
        for r0, r1 in self._plan(len(self._channels)):
            s = self._band(self._channels, r0, r1)  # [B, K', W]
            if shift:
                s += off[None, :, None]  # upstream subtracts after the resize to the output size
            yield r0, r1, s.transpose(1, 0, 2)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        for r0, r1, s in self.bands():
            out[:, r0:r1] = s
        return out if dtype is None else out.astype(dtype, copy=False)

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        return np.asarray(self, dtype=dtype)

    def _reduce(self, axis: Any, fn: str, compact: bool = False) -> np.ndarray:
        if axis not in (0, -3):
            return getattr(np.asarray(self), fn)(axis=axis)
        n = len(self._channels)
        label_type = np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.int64
        out = np.empty(self._hw, (label_type if compact else np.int64) if fn == "argmax" else np.float32)
        for r0, r1, s in self.bands():
            out[r0:r1] = getattr(s, fn)(axis=0)  # first maximum on ties, like torch/numpy on the full array
        return out

    def argmax(self, axis: Any = None) -> np.ndarray:
        """Label map int64 [H, W] for axis=0 (streamed, or kept from `compute_labels`); other axes materialise
        the array."""
        if axis in (0, -3) and self._labels is not None and self._labels[0] == self._offsets.tobytes():
            return self._labels[1].astype(np.int64)
        return self._reduce(axis, "argmax")

    def max(self, axis: Any = None) -> np.ndarray:
        """Best score float32 [H, W] for axis=0 (streamed); other axes materialise the array."""
        return self._reduce(axis, "max")

    # ---- channel views and the in-place offset idiom
    def __getitem__(self, key: Any) -> Any:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(key, (int, np.integer)):
            view = self._view(self._channels[[int(key)]])
            return np.asarray(view)[(0, *rest)]
        view = self._view(self._channels[key])
        return np.asarray(view)[(slice(None), *rest)] if rest else view

    def labels(self, dtype: Any = np.int32) -> np.ndarray:
        """argmax(0) as `dtype` without an int64 intermediate when the label map is kept."""
        if self._labels is not None and self._labels[0] == self._offsets.tobytes():
            return self._labels[1].astype(dtype)
        return self.argmax(0).astype(dtype)

    def _view(self, channels: np.ndarray) -> "SemanticScores":
        return SemanticScores((self._full_k, *self._hw), self._band, self._plan, channels=np.atleast_1d(channels),
                              offsets=self._offsets)

    def __iadd__(self, value: Any) -> "SemanticScores":
        return self._shift(value, +1)

    def __isub__(self, value: Any) -> "SemanticScores":
        return self._shift(value, -1)

    def _shift(self, value: Any, sign: int) -> "SemanticScores":
        if np.ndim(value) != 0:
            raise TypeError("sem_seg is computed lazily: only a scalar can be added to or subtracted from classes "
                            "in place; take np.asarray(sem_seg) for arbitrary edits.")
        # `x[c] -= v` subtracts once per selected class even when c repeats, as numpy does.
        self._offsets[np.unique(self._channels)] += np.float32(sign * np.float32(value))
        return self

    def __setitem__(self, key: Any, value: Any) -> None:
        # `sem[c] -= v` ends with sem[c] = <the view already shifted in place>: nothing left to do.
        if isinstance(value, SemanticScores) and value._offsets is self._offsets:
            return
        raise TypeError("sem_seg is computed lazily and cannot be written to; take np.asarray(sem_seg) for a "
                        "writable array (or use `sem_seg[classes] -= value` for a per-class offset).")

    # ---- arithmetic falls back to the materialised array (tests compare with reference arrays)
    def _arr(self) -> np.ndarray:
        return np.asarray(self)

    def __sub__(self, other: Any) -> np.ndarray:
        return self._arr() - np.asarray(other)

    def __rsub__(self, other: Any) -> np.ndarray:
        return np.asarray(other) - self._arr()

    def __add__(self, other: Any) -> np.ndarray:
        return self._arr() + np.asarray(other)

    __radd__ = __add__


class PackedMasks:
    """Binary masks [N, H, W] (instances' pred_masks) stored bit-packed per distinct query.

    `packed` [U, H, ceil(W/8)] uint8 holds U distinct masks; `index` [N] says which one each instance uses
    (a query can appear with several classes). masks[i] -> bool [H, W]; masks[idx] -> a lazy subset.
    """

    def __init__(self, packed: np.ndarray, index: np.ndarray, width: int) -> None:
        self._packed = packed
        self._index = np.asarray(index, np.int64)
        self._w = int(width)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self._index), self._packed.shape[1], self._w)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(bool)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def nbytes(self) -> int:
        return int(self._packed.nbytes)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"PackedMasks(shape={self.shape}, {self.nbytes} bytes bit-packed)"

    def _unpack(self, u: int) -> np.ndarray:
        return np.unpackbits(self._packed[u], axis=-1, count=self._w).view(bool)

    def __getitem__(self, key: Any) -> Any:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(key, (int, np.integer)):
            m = self._unpack(int(self._index[int(key)]))
            return m[rest] if rest else m
        sub = PackedMasks(self._packed, self._index[key], self._w)
        return np.asarray(sub)[(slice(None), *rest)] if rest else sub

    def __iter__(self) -> Iterator[np.ndarray]:
        for u in self._index:
            yield self._unpack(int(u))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, bool)
        for i, u in enumerate(self._index):
            out[i] = self._unpack(int(u))
        return out if dtype is None else out.astype(dtype, copy=False)

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        return np.asarray(self, dtype=dtype)
