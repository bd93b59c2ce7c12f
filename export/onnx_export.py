"""Trace a model to ONNX with the graph contract (DESIGN.md: inputs, outputs, metadata), check, simplify and
self-describe it."""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from ..runtime.artifacts.onnx_metadata import ExportRecord, InputFacts, Provenance, write_onnx_metadata
from ..runtime.errors import ZsdError
from ..runtime.files import atomic_write
from ..runtime.version import PRODUCER
from .models.msdeformattn import LOWERINGS, lowering

EXPORTER_VERSION = PRODUCER
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(17, 22)


@dataclass(frozen=True)
class ExportShape:
    """Static H x W (multiples of 32) and batch, or dynamic batch/H/W."""

    height: int = 800
    width: int = 1216
    batch: int = 1
    dynamic: bool = False

    def validate(self) -> None:
        if not self.dynamic and (self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0):
            raise ZsdError(f"--height {self.height} --width {self.width}: both must be positive multiples of 32 "
                           "(the backbone has stride 32).",
                           f"use e.g. --height {max(32, round(self.height / 32) * 32)} "
                           f"--width {max(32, round(self.width / 32) * 32)}, or --dynamic.")
        if self.batch < 1:
            raise ZsdError(f"--batch {self.batch} must be >= 1.", "pass --batch 1 or more.")


def check_shape_flags(height: int | None, width: int | None, batch: int, dynamic: bool) -> None:
    """Refuse contradictory or impossible shape options as given (before defaults fill them in): a value that
    would otherwise be silently replaced is an error, not a surprise."""
    for flag, value in (("--height", height), ("--width", width)):
        if value is not None and dynamic:
            raise ZsdError(f"{flag} {value} and --dynamic contradict each other: a dynamic export accepts any "
                           "height and width.", f"drop {flag} (dynamic) or --dynamic (static {flag} {value}).")
        if value is not None and value <= 0:
            raise ZsdError(f"{flag} {value} must be a positive multiple of 32.",
                           f"pass e.g. {flag} 640, or leave it out for the default.")
    if dynamic and batch != 1:
        raise ZsdError(f"--batch {batch} and --dynamic contradict each other: a dynamic export accepts any batch.",
                       "drop --batch (dynamic) or --dynamic (static batch).")


class Progress:
    """Numbered steps with elapsed time on stderr-free stdout (long steps say they are running)."""

    def __init__(self, total: int, printer: Callable[[str], None] = print) -> None:
        self.total, self.i, self.printer = total, 0, printer
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def step(self, what: str):
        self.i += 1
        start = time.perf_counter()
        self.printer(f"[{self.i}/{self.total}] {what} ...")
        yield
        self.printer(f"[{self.i}/{self.total}] {what}: done in {time.perf_counter() - start:.1f} s")


@contextlib.contextmanager
def quiet_exporter():
    """torch.onnx/onnxscript print pages of per-node chatter; keep the user's terminal readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield sink
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def trace_to_onnx(model: torch.nn.Module, shape: ExportShape, *, opset: int, msda: str,
                  input_names: tuple[str, ...] = ("images",),
                  output_names: tuple[str, ...] = ("class_logits", "mask_logits"),
                  extra_inputs: tuple[torch.Tensor, ...] = (),
                  extra_dynamic: tuple[dict | None, ...] = ()) -> onnx.ModelProto:
    """torch.export + the dynamo ONNX exporter, with MSDeformAttn lowered as `msda`."""
    if opset not in SUPPORTED_OPSETS:
        raise ZsdError(f"--opset {opset} is not supported.", f"choose one of {list(SUPPORTED_OPSETS)} (default 18).")
    if msda not in LOWERINGS:
        raise ZsdError(f"--msda {msda} is unknown.", f"choose one of {LOWERINGS}.")
    shape.validate()
    # dynamo specialises a dynamic batch of 1 to a constant: trace dynamic graphs with batch 2.
    batch = max(2, shape.batch) if shape.dynamic else shape.batch
    example_hw = (shape.height, shape.width) if not shape.dynamic else (256, 320)
    images = torch.rand(batch, 3, *example_hw, generator=torch.Generator().manual_seed(0)) * 255
    dynamic_shapes = None
    if shape.dynamic:
        b = torch.export.Dim("batch", min=1, max=256)
        h = torch.export.Dim("h32", min=1, max=256)
        w = torch.export.Dim("w32", min=1, max=256)
        dynamic_shapes = ({0: b, 2: 32 * h, 3: 32 * w},) + tuple(extra_dynamic)
    from .plugin_lowering import custom_translations  # noqa: PLC0415 (only needed for plugin nodes)

    with torch.no_grad(), lowering(msda), quiet_exporter():
        program = torch.onnx.export(
            model, (images, *extra_inputs), dynamo=True, opset_version=opset,
            input_names=list(input_names), output_names=list(output_names),
            dynamic_shapes=dynamic_shapes, external_data=False, optimize=True, verbose=False,
            custom_translation_table=custom_translations(msda),
        )
    proto = program.model_proto
    got = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if got != opset:
        proto = convert_opset(proto, opset)
    if shape.dynamic:
        _name_dynamic_axes(proto, input_names, output_names)
    return proto


def convert_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    try:
        return onnx.version_converter.convert_version(proto, opset)
    except Exception as e:  # noqa: BLE001 (the converter raises bare RuntimeErrors)
        raise ZsdError(f"the graph could not be converted to opset {opset} ({str(e).splitlines()[0]}).",
                       f"use --opset {DEFAULT_OPSET} (the exporter's native opset); TensorRT 8.6+ and "
                       "ONNX Runtime 1.14+ read it.") from None


def _name_dynamic_axes(proto: onnx.ModelProto, input_names, output_names) -> None:
    """Give the symbolic dims readable names (batch, height, width) for tools like Netron and trtexec."""
    names = {0: "batch", 2: "height", 3: "width"}
    for vi in proto.graph.input:
        if vi.name in input_names[:1]:
            for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
                if axis in names and not dim.HasField("dim_value"):
                    dim.dim_param = names[axis]


def check_and_simplify(proto: onnx.ModelProto, simplify: bool = True) -> onnx.ModelProto:
    onnx.checker.check_model(proto)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    if simplify:
        import onnxslim

        with quiet_exporter():
            proto = onnxslim.slim(proto)
        onnx.checker.check_model(proto)
    return proto


def provenance(*, weights: str, checkpoint_sha256: str, config_path: Path, opset: int) -> Provenance:
    """What an export is made from (`weights`: the label the metadata shows: a file name, "standin" or "demo")."""
    from ..runtime.files import file_sha256

    return Provenance(exporter_version=EXPORTER_VERSION, torch_version=torch.__version__, opset=opset,
                      weights=weights, checkpoint_sha256=checkpoint_sha256, standin_weights=weights == "standin",
                      config=config_path.name, config_sha256=file_sha256(config_path))


def input_facts(shape: ExportShape, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> InputFacts:
    return InputFacts(shape.dynamic, shape.batch, shape.height, shape.width, tuple(pixel_mean), tuple(pixel_std))


def set_metadata(proto: onnx.ModelProto, record: ExportRecord) -> None:
    """Write an export's record through the artifact contract (runtime.artifacts.onnx_metadata, the one writer)."""
    write_onnx_metadata(proto, record, producer_version=EXPORTER_VERSION)


def save_atomic(proto: onnx.ModelProto, output: Path) -> None:
    """Through runtime.files' one checked writer: an interrupted export never leaves a partial .onnx, and the file
    gets the umask's mode (readable by a Triton container, not mkstemp's 0600)."""
    atomic_write(output, lambda f: f.write(proto.SerializeToString()))


def say(msg: str) -> None:
    print(msg, flush=True)
    sys.stdout.flush()
