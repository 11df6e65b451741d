"""``cnnctl export``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import CHECKPOINT_HELP, checkpoint_argument, command, complete_checkpoint, print_json
from cnnctl.exporter import FORMATS
from cnnctl.options import choice_settings


def _format_names() -> list[str]:
    return list(FORMATS)


_FORMAT_HELP = "; ".join(f"{entry.name}: {entry.description}" for entry in FORMATS.values()).replace("[", "\\[")


@command("export")
def export_command(
    checkpoint_path: Annotated[str | None, typer.Argument(
        metavar="CHECKPOINT", help=CHECKPOINT_HELP, autocompletion=complete_checkpoint)] = None,
    format: Annotated[str, typer.Option("--format", "-f", help=_FORMAT_HELP, **choice_settings(_format_names))]
        = "onnx",
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help="accept any batch size \\[default: exactly 1 image per call]")] = False,
    opset: Annotated[int | None, typer.Option(min=7, help="ONNX opset \\[default: the exporter's own]")] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="model file or folder to write \\[default: beside the checkpoint]")] = None,
    root: Annotated[str | None, typer.Option(help="data folder with the test images \\[env: CNNCTL_DATA]")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Export a checkpoint to ONNX or TorchScript.

    The exported model must give PyTorch's outputs (within 1e-4, on test images of its dataset when present \
here); its preprocessing is written beside it as JSON."""
    from cnnctl.exporter import export

    checkpoint_path = checkpoint_argument(checkpoint_path)

    result = export(checkpoint_path, format=format, output=output, dynamic_batch=dynamic_batch, opset=opset,
                    root=root)
    if json_output:
        print_json(result.to_dict())
        return
    kind = f"ONNX opset {result.opset}" if result.format == "onnx" else "TorchScript"
    batch = "any batch size" if result.dynamic_batch else "batch size 1"
    print(f"wrote {result.model_path} ({kind}, {batch}) and {result.preprocessing_path.name}")
    print(f"verified on {result.verified_on}: max abs difference from PyTorch {result.max_abs_diff:.2e} "
          f"(tolerance {result.tolerance:g})" + (f"; {result.label_decisions:,} label decisions at the thresholds "
                                                 "agree" if result.label_decisions is not None else ""))
