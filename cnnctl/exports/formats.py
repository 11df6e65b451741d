"""The export registry: one :class:`ExportFormat` per ``--format``, and what the entries share.

An entry serialises a model in memory (``write``) and loads those bytes back in its own runtime (``runner``), so
``cnnctl export`` can evaluate the export before a byte is written and ``cnnctl benchmark`` can time it without
touching the disk. Adding a format is one ``register_format(ExportFormat(...))`` in a module of this package that
``cnnctl/exporter.py`` imports.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnctl.registry import suggest

if TYPE_CHECKING:
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-4  # largest accepted absolute difference between an exact export's logits and PyTorch's

Runner = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Calibration:
    """The images a quantised format calibrates its ranges on (normalised, N×C×H×W) and how it was asked to:
    ``method`` (minmax, entropy, percentile); ``described`` says where the images came from, in words."""

    images: torch.Tensor
    method: str
    described: str
    split: str = "train"

    @property
    def count(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Exported:
    """What ``ExportFormat.write`` made: the files' bytes by suffix (the format's own ``suffix`` is the file a
    user names; companions such as OpenVINO's ``.bin`` sit beside it), the opset written (ONNX) and facts for the
    export's JSON entry (how it was quantised, the runtime's settings)."""

    files: dict[str, bytes]
    opset: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


@dataclass(frozen=True)
class ExportFormat:
    """One ``--format``.

    ``write(model, inputs, *, dynamic_batch, opset, arch, calibration)`` returns an :class:`Exported`;
    ``runner(files, threads=None)`` loads its files in the format's runtime as a batch → logits function;
    ``require()`` fails in one line naming the extra to install when the runtime is missing. ``tolerance``: an exact
    format must give PyTorch's logits within it; None for a lossy one (FP16, INT8), judged by the accuracy gate
    alone. ``calibrated``: it needs calibration images (``--calibration-images``); ``methods``: the calibration
    methods it offers, the default first; ``has_opset``: ``--opset`` applies. ``companions``: the suffixes of the
    files written beside the model file; ``title``: how messages name it."""

    name: str
    description: str
    suffix: str
    write: Callable[..., Exported]
    runner: Callable[..., Runner]
    runtime: str
    precision: str = "fp32"
    require: Callable[[], None] | None = None
    tolerance: float | None = TOLERANCE
    calibrated: bool = False
    methods: tuple[str, ...] = ()
    has_opset: bool = False
    companions: tuple[str, ...] = ()
    title: str = ""  # how output names it: ONNX INT8, OpenVINO IR FP16 (default: the name)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (*self.companions, self.suffix)


FORMATS: dict[str, ExportFormat] = {}


def register_format(info: ExportFormat) -> ExportFormat:
    FORMATS[info.name] = info
    return info


def get_format(format: str) -> ExportFormat:
    name = format.strip().lower()
    if name not in FORMATS:
        raise suggest(format, list(FORMATS), "export format")
    return FORMATS[name]


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """The exporters and quantisers warn and log about their own future (TorchScript is deprecated), opset
    conversion, tracing details and progress; cnnctl checks the result itself and reports what matters."""
    import logging
    import os

    names = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir", "nncf", "root", "torch.utils.cpp_extension")
    loggers = [logging.getLogger(None if name == "root" else name) for name in names]
    levels = [logger.level for logger in loggers]
    telemetry = os.environ.get("OPENVINO_TELEMETRY_OPT_OUT")
    try:
        os.environ["OPENVINO_TELEMETRY_OPT_OUT"] = "1"  # nothing leaves the machine
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", module=r"torch\..*")
            warnings.filterwarnings("ignore", module=r"onnxscript\..*")
            warnings.filterwarnings("ignore", module=r"openvino\..*")
            warnings.filterwarnings("ignore", module=r"nncf\..*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if telemetry is None:
            os.environ.pop("OPENVINO_TELEMETRY_OPT_OUT", None)
        else:
            os.environ["OPENVINO_TELEMETRY_OPT_OUT"] = telemetry
