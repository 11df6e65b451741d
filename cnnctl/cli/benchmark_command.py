"""``cnnctl benchmark``."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cnnctl.cli._common import (
    CHECKPOINT_HELP,
    checkpoint_argument,
    command,
    complete_checkpoint,
    print_json,
    stderr_line,
)
from cnnctl.cli.params import declare
from cnnctl.exporter import FORMATS
from cnnctl.recipe.commands import BENCHMARK, command_values

if TYPE_CHECKING:
    from cnnctl.benchmark import BenchmarkReport


def benchmark_command(checkpoint_path: str | None = None, **params: Any) -> None:
    """Latency (batch 1) and throughput of a checkpoint in PyTorch eager and every export format (TorchScript, ONNX
    Runtime FP32/FP16/INT8, OpenVINO FP32/FP16/INT8) on this machine, and each export's size; nothing is written."""
    from cnnctl.benchmark import benchmark

    values = command_values(BENCHMARK, params)
    checkpoint_path = checkpoint_argument(checkpoint_path)
    json_output = values.pop("json_output")
    report = benchmark(checkpoint_path, **values, log=stderr_line if not json_output else lambda _: None)
    if json_output:
        print_json(report.to_dict())
        return
    print("\n".join(table_lines(report)))


def table_lines(report: BenchmarkReport) -> list[str]:
    """The report as a Markdown table, under one line saying what was timed where."""
    machine = report.machine
    load = machine.get("load_average_before")
    shape = "x".join(map(str, report.input_shape))
    lines = [f"{report.arch}, input {shape}, {report.threads} thread(s), throughput at batch {report.batch_size}; "
             f"{machine.get('cpu')}, {machine.get('cores')} cores, load average {load[0] if load else '?'}",
             "",
             f"| runtime | version | latency, batch 1 (ms) | throughput, batch {report.batch_size} (img/s) "
             "| size | note |",
             "|---|---|---:|---:|---:|---|"]
    for row in report.rows:
        latency = f"{row.latency_ms:.3g}" if row.latency_ms is not None else "—"
        throughput = f"{row.throughput:,.0f}" if row.throughput is not None else "—"
        lines.append(f"| {row.title} | {row.runtime} | {latency} | {throughput} | {_size(row.size_bytes)} | "
                     f"{row.note} |")
    if report.calibration:
        lines += ["", f"int8 formats calibrated on {report.calibration}"]
    return lines


def _size(size: int | None) -> str:
    if size is None:
        return "—"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


declare(benchmark_command, BENCHMARK, leading=[inspect.Parameter(
    "checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
    annotation=Annotated[str | None, typer.Argument(metavar="CHECKPOINT", help=CHECKPOINT_HELP,
                                                    autocompletion=complete_checkpoint)])],
        extra={"formats": {"help": f"export formats to time: {', '.join(FORMATS)} \\[default: all]"}})
command("benchmark")(benchmark_command)
