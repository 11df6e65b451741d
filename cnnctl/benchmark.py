"""``cnnctl benchmark``: how fast a checkpoint runs in each runtime on this machine.

For PyTorch (eager) and every export format whose runtime is installed, the model is exported in memory (any batch
size; int8 formats calibrated on training images when they are here, else on random pixels, which is enough to
time them) and timed: the median latency of one image (batch 1) and the throughput at a larger batch, plus the
export's size on disk. The same number of threads is given to every runtime. Nothing is written.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import existing_checkpoint
from cnnctl.checkpoint import load as load_checkpoint
from cnnctl.errors import CnnctlError, UsageError, first_line
from cnnctl.exporter import FORMATS, get_format
from cnnctl.exports import images as export_images
from cnnctl.exports.formats import package_version, quiet_exporters

if TYPE_CHECKING:
    import torch

BATCH = 64
SECONDS = 1.0  # least time spent timing each measurement
MIN_CALLS = 5
CALIBRATION = 64  # images an int8 format calibrates on for timing


@dataclass
class BenchmarkRow:
    name: str  # pytorch, or the export format
    title: str  # PyTorch eager, ONNX INT8, ...
    runtime: str  # the runtime and its version
    latency_ms: float | None = None  # batch 1, median
    throughput: float | None = None  # images per second at the report's batch size
    size_bytes: int | None = None  # on disk
    note: str = ""  # why there are no numbers, or what to know about them


@dataclass
class BenchmarkReport:
    checkpoint: str
    arch: str
    input_shape: list[int]
    batch_size: int
    threads: int
    rows: list[BenchmarkRow]
    machine: dict[str, Any] = field(default_factory=dict)
    calibration: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(row) for row in self.rows]}


def benchmark(checkpoint_path: Any, *, batch_size: int = BATCH, threads: int | None = None,
              formats: str | list[str] | None = None, seconds: float = SECONDS, root: Any = None,
              log: Callable[[str], None] = lambda _: None) -> BenchmarkReport:
    """Time ``checkpoint_path`` in PyTorch eager and in each of ``formats`` (names, or one comma-separated text;
    default: every registered one);
    ``threads`` for every runtime (default: torch's current number). A format whose runtime is missing, or which
    cannot export this model, gets a row saying why."""
    import torch

    if batch_size < 2:
        raise UsageError(f"--batch-size must be at least 2 (batch 1 is the latency), not {batch_size}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--seconds must be a positive number, not {seconds}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, not {threads}")
    if isinstance(formats, str):  # the command line's NAME[,...]
        formats = [name.strip() for name in formats.split(",") if name.strip()]
    chosen = [get_format(name).name for name in formats] if formats else list(FORMATS)
    chosen.sort(key=lambda name: name != "torchscript")  # the other PyTorch row first; then the registry's order
    source = existing_checkpoint(Path(checkpoint_path))
    model, meta = load_checkpoint(source, device="cpu")
    model.eval()
    previous = torch.get_num_threads()
    threads = threads or previous
    load_before = _load()
    torch.set_num_threads(threads)
    try:
        inputs = export_images.random_inputs(meta, batch_size)
        calibration = _calibration(meta, root) if any(FORMATS[name].calibrated for name in chosen) else None
        log(f"timing {meta.arch} ({'x'.join(map(str, inputs.shape[1:]))}) with {threads} thread(s)")

        def eager(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(batch)

        rows = [_timed(BenchmarkRow("pytorch", "PyTorch eager", f"torch {torch.__version__.split('+')[0]}",
                                    size_bytes=source.stat().st_size, note="the .safetensors checkpoint"),
                       eager, inputs, seconds)]
        for name in chosen:
            log(f"exporting and timing {name}")
            rows.append(_format_row(name, model, meta.arch, inputs, calibration, threads, seconds))
    finally:
        torch.set_num_threads(previous)
    machine = {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_average_before": load_before,
               "load_average_after": _load(), "python": platform.python_version(), "versions": versions()}
    return BenchmarkReport(str(source), meta.arch, list(inputs.shape[1:]), batch_size, threads, rows, machine,
                           calibration.described if calibration is not None else "")


def _format_row(name: str, model: Any, arch: str, inputs: torch.Tensor, calibration: Any, threads: int,
                seconds: float) -> BenchmarkRow:
    info = FORMATS[name]
    row = BenchmarkRow(name, info.title or name, info.runtime)
    try:
        if info.require is not None:
            info.require()
        with quiet_exporters():
            exported = info.write(model, inputs[:2], dynamic_batch=True, opset=None, arch=arch,
                                  calibration=calibration if info.calibrated else None)
            run = info.runner(exported.files, threads=threads)
            row.size_bytes = exported.size
            runtime = getattr(run, "runtime", {})
            row.runtime = " ".join(str(runtime[key]) for key in ("name", "version") if key in runtime) or row.runtime
            if runtime.get("inference_precision"):
                row.note = f"inference precision {runtime['inference_precision']}"
            return _timed(row, run, inputs, seconds)
    except CnnctlError as error:
        row.note = str(error)
    except Exception as error:  # a runtime's own failure, on a model it cannot take: reported in its row
        row.note = f"failed: {first_line(error, 160)}"
    return row


def _timed(row: BenchmarkRow, run: Callable[[torch.Tensor], Any], inputs: torch.Tensor, seconds: float) -> BenchmarkRow:
    row.latency_ms = 1000 * _median_seconds(run, inputs[:1], seconds)
    row.throughput = inputs.shape[0] / _median_seconds(run, inputs, seconds)
    return row


def _median_seconds(run: Callable[[torch.Tensor], Any], batch: torch.Tensor, seconds: float) -> float:
    """The median time of one call, over at least ``MIN_CALLS`` calls and ``seconds``, after two to warm up."""
    for _ in range(2):
        run(batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MIN_CALLS or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _calibration(meta: Any, root: Any) -> Any:
    try:
        return export_images.calibration_images(meta, count=CALIBRATION, method="minmax", root=root)
    except CnnctlError:  # timing does not need good ranges
        return export_images.random_calibration(meta, count=CALIBRATION, method="minmax")


def _load() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """The runtimes' versions, for the record."""
    return {name: package_version(name) for name in ("torch", "onnxruntime", "openvino", "nncf")}
