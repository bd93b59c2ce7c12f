"""int8 entropy calibration for builder-flag int8 builds (TensorRT <= 10: IInt8EntropyCalibrator2).

Images are pre-processed exactly as at inference (runtime.preprocess) at the calibration profile's shape. Graphs
that carry their own int8 scales (export-model --precision int8: Q/DQ nodes) need none of this.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ZsdError
from ..artifacts.onnx_metadata import ModelInfo
from ..preprocess import fit_short_edge
from .loader import Say
from .profiles import Shape

__all__ = ["make_calibrator"]


def make_calibrator(files: Sequence[Path], shape: Shape, info: ModelInfo, cache: Path, say: Say) -> Any:
    """IInt8EntropyCalibrator2 over images pre-processed exactly as at inference (runtime.preprocess).

    Batches have the calibration profile's shape; images are resized with the model's ResizeShortestEdge
    policy (shrunk further only where an image would not fit the canvas) and padded with the pixel mean.
    The cache is read when it exists (TensorRT then skips calibration) and written atomically.
    """
    import numpy as np
    import tensorrt as trt

    from .. import cuda_utils
    from ..files import atomic_write
    from ..imageio import load_image
    from ..preprocess import preprocess

    batch, _, height, width = shape

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffer = cuda_utils.DeviceBuffer(int(np.prod(shape)) * 4)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int]:
            if self.index + batch > len(files):
                return []  # done (a partial last batch is dropped: the batch size is fixed)
            tensors = []
            for path in files[self.index:self.index + batch]:
                rgb = load_image(path).rgb
                short, max_size = fit_short_edge(rgb.shape[0], rgb.shape[1], (height, width),
                                                 info.min_size_test, info.max_size_test)
                tensors.append(preprocess([rgb], short_edge=short, max_size=max_size,
                                          size_divisibility=info.size_divisibility, pixel_mean=info.pixel_mean,
                                          fixed_hw=(height, width)).tensor)
            data = np.ascontiguousarray(np.concatenate(tensors, axis=0), dtype=np.float32)
            cuda_utils.memcpy_htod(self.buffer.ptr, data)
            self.index += batch
            if self.index // batch % 10 == 1:
                say(f"  calibration batch {self.index // batch}/{len(files) // batch}")
            return [self.buffer.ptr] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            if cache.is_file():
                say(f"  using calibration cache {cache}")
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            payload = bytes(data)

            def write(f: io.BufferedWriter) -> None:
                f.write(payload)

            atomic_write(cache, write)
            say(f"  wrote calibration cache {cache}")

    if not files:
        say(f"  no --calib-images: TensorRT reads the calibration cache {cache}")
    elif len(files) < batch:
        raise ZsdError(f"--calib-images has {len(files)} image(s), fewer than the calibration batch {batch}.",
                       "add images (a few hundred representative ones is typical).")
    return EntropyCalibrator()
