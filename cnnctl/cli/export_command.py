"""``cnnctl export``."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from cnnctl.cli._common import CHECKPOINT_HELP, checkpoint_argument, command, complete_checkpoint, print_json
from cnnctl.cli.params import declare
from cnnctl.exporter import FORMATS
from cnnctl.recipe.commands import EXPORT, command_values
from cnnctl.recipe.options import choice_settings


def _format_names() -> list[str]:
    return list(FORMATS)


_FORMAT_HELP = "; ".join(f"{entry.name}: {entry.description}" for entry in FORMATS.values()).replace("[", "\\[")


def export_command(checkpoint_path: str | None = None, **params: Any) -> None:
    """Export a checkpoint to ONNX or TorchScript.

    The exported model must give PyTorch's outputs (within 1e-4, on test images of its dataset when present \
here); its preprocessing is written beside it as JSON."""
    from cnnctl.exporter import export

    checkpoint_path = checkpoint_argument(checkpoint_path)

    values = command_values(EXPORT, params)
    result = export(checkpoint_path, format=values["format"], output=values["output"],
                    dynamic_batch=values["dynamic_batch"], opset=values["opset"], root=values["root"])
    if values["json_output"]:
        print_json(result.to_dict())
        return
    kind = f"ONNX opset {result.opset}" if result.format == "onnx" else "TorchScript"
    batch = "any batch size" if result.dynamic_batch else "batch size 1"
    print(f"wrote {result.model_path} ({kind}, {batch}) and {result.preprocessing_path.name}")
    print(f"verified on {result.verified_on}: max abs difference from PyTorch {result.max_abs_diff:.2e} "
          f"(tolerance {result.tolerance:g})")


declare(export_command, EXPORT, leading=[inspect.Parameter(
    "checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
    annotation=Annotated[str | None, typer.Argument(metavar="CHECKPOINT", help=CHECKPOINT_HELP,
                                                    autocompletion=complete_checkpoint)])],
        extra={"format": {"help": _FORMAT_HELP, **choice_settings(_format_names)}})
command("export")(export_command)
