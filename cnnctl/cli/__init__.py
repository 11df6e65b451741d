"""The ``cnnctl`` command line: parse options, call the library, render results. No logic lives here.

Each command is its own module; torch is imported only inside commands, so ``cnnctl --help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

import cnnctl.cli.explain_command  # noqa: F401  (registers `cnnctl explain`)
import cnnctl.cli.export_command  # noqa: F401  (registers `cnnctl export`)
from cnnctl.cli import (  # noqa: F401  (each registers its commands)
    benchmark_command,
    calibrate_command,
    check_command,
    data_commands,
    doctor_command,
    embed_command,
    eval_command,
    info_commands,
    lr_find_command,
    predict_command,
    probe_command,
    runs_command,
    serve_command,
    train_command,
    tune_command,
)
from cnnctl.cli._common import app, state

# `cnnctl --help` lists the commands in the order of a workflow; commands not named here follow, as registered
WORKFLOW = ("download", "train", "eval", "predict", "calibrate", "serve", "embed", "probe", "export",
            "benchmark", "check", "runs", "tune", "summary", "list", "doctor")


def _in_workflow_order() -> None:
    def position(info: typer.models.CommandInfo) -> int:
        name = info.name or (info.callback.__name__ if info.callback else "")
        return WORKFLOW.index(name) if name in WORKFLOW else len(WORKFLOW)

    app.registered_commands.sort(key=position)  # a stable sort keeps the others in their order


_in_workflow_order()

# `cnnctl --help`: one line per command (each command's own help says the rest)
SUMMARIES = {
    "download": "fetch and verify datasets (or pretrained weights)",
    "train": "train an architecture on a dataset or your own images",
    "eval": "accuracy, per-class metrics, confusion matrix, --report",
    "predict": "classify image files and folders (CSV or JSON)",
    "calibrate": "fit temperature scaling (and an abstention threshold) on validation",
    "serve": "serve a checkpoint over HTTP: POST /predict, batched",
    "embed": "write L2-normalised features of images, with their paths",
    "probe": "rank the pretrained backbones on this machine by a linear probe",
    "export": "export to ONNX, OpenVINO or TorchScript, judged in its runtime",
    "benchmark": "latency and throughput in PyTorch, ONNX Runtime, OpenVINO",
    "check": "check an image folder before training: unreadable files, leaks",
    "tune": "search hyper-parameters with Optuna",
    "summary": "layers, parameter counts and MACs of a model",
    "list": "the architectures and datasets cnnctl knows",
    "doctor": "check the installation: versions, devices, folders",
    "explain": "heat maps of where a model finds its evidence",
    "lr-find": "sweep the learning rate and suggest --lr",
    "runs": "list run folders and their status; runs compare plots them",
}


def _summaries() -> None:
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        info.short_help = info.short_help or SUMMARIES.get(name)
    for group in app.registered_groups:
        group.short_help = group.short_help or SUMMARIES.get(group.name or "")


_summaries()


def version_line() -> str:
    """``cnnctl 0.1.0 (torch 2.4.0, torchvision 0.19.0, Python 3.12.3)``, read without importing torch."""
    from importlib.metadata import PackageNotFoundError, version

    import cnnctl

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    return f"cnnctl {cnnctl.__version__} (torch {installed('torch')}, torchvision {installed('torchvision')}, " \
           f"Python {python})"


def _print_version(value: bool) -> None:
    if value:
        print(version_line())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_print_version, is_eager=True, help="print the version and exit")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="show the full traceback when something fails (anywhere on the line, or CNNCTL_DEBUG=1)",
    )] = False,
) -> None:
    """Train, evaluate and run image-classification CNNs."""
    if debug:
        state.debug = True


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. ``--debug`` may appear anywhere on the line (or CNNCTL_DEBUG=1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        args.remove("--debug")
        state.debug = True
    if os.environ.get("CNNCTL_DEBUG") in ("1", "true", "yes"):
        state.debug = True
    app(args=args, prog_name="cnnctl")


__all__ = ["app", "main"]
