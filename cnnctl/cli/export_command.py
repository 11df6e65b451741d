"""``cnnctl export``."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cnnctl.cli._common import CHECKPOINT_HELP, checkpoint_argument, command, complete_checkpoint, print_json
from cnnctl.cli.params import declare
from cnnctl.exporter import FORMATS
from cnnctl.recipe.commands import EXPORT, command_values
from cnnctl.recipe.options import choice_settings

if TYPE_CHECKING:
    from cnnctl.exporter import ExportResult


def _format_names() -> list[str]:
    return list(FORMATS)


_FORMAT_HELP = "; ".join(f"{entry.name}: {entry.description}" for entry in FORMATS.values()).replace("[", "\\[")


def export_command(checkpoint_path: str | None = None, **params: Any) -> None:
    """Export a checkpoint to ONNX (FP32, FP16, INT8), OpenVINO IR (FP32, FP16, INT8) or TorchScript.

    The export is run in its own runtime on the checkpoint's test split (or --data) beside PyTorch: exact formats \
must give PyTorch's outputs (within 1e-4; OpenVINO 1e-3), and no export may lose more than --max-drop accuracy \
points, or nothing is written. Its preprocessing is written beside it as JSON."""
    from cnnctl.exporter import export

    values = command_values(EXPORT, params)  # before any work: --max-drop 101 is one line
    checkpoint_path = checkpoint_argument(checkpoint_path)
    json_output = values.pop("json_output")
    result = export(checkpoint_path, **values)
    if json_output:
        print_json(result.to_dict())
        return
    for line in export_lines(result):
        print(line)


def export_lines(result: ExportResult) -> list[str]:
    """What ``cnnctl export`` prints: what was written, then how it compares with PyTorch."""
    title = FORMATS[result.format].title or result.format
    kind = f"{title} opset {result.opset}" if result.opset is not None else title
    batch = "any batch size" if result.dynamic_batch else "batch size 1"
    companions = "".join(f", {path.name}" for path in result.files[:-1])
    lines = [f"wrote {result.model_path} ({kind}, {batch}{companions}) and {result.preprocessing_path.name}"]
    quantization = result.details.get("quantization")
    if quantization:
        calibration = quantization["calibration"]
        lines.append(f"quantised by {quantization['tool']}: calibrated ({calibration['method']}) on "
                     f"{calibration['from']}")
    runtime = result.runtime
    where = " ".join(str(runtime[key]) for key in ("name", "version") if key in runtime)
    if "inference_precision" in runtime:
        where += f", inference precision {runtime['inference_precision']}"
    comparison = result.comparison
    if result.tolerance is not None:
        lines.append(f"verified on {result.verified_on} in {where}: max abs difference from PyTorch "
                     f"{result.max_abs_diff:.2e} (tolerance {result.tolerance:g})"
                     + (f"; {result.label_decisions:,} label decisions at the thresholds agree"
                        if result.label_decisions is not None else ""))
    else:
        lines.append(f"compared on {result.verified_on} in {where}")
    if comparison is not None:
        k = comparison.k
        agreement = (f"top-1 agreement {100 * comparison.top1_agreement:.2f}%, top-{k} agreement "
                     f"{100 * comparison.topk_agreement:.2f}%, largest probability difference "
                     f"{comparison.max_prob_diff:.2g}")
        if comparison.accuracy is not None:
            reference = 100 * comparison.reference_accuracy
            measure = "subset accuracy" if result.multilabel else "accuracy"
            lines.append(f"{measure} {100 * comparison.accuracy:.2f}% (PyTorch {reference:.2f}%, "
                         f"{0.0 - comparison.drop:+.2f} points; --max-drop {result.max_drop:g}); {agreement}")
        else:
            lines.append(f"accuracy not checked (no labelled images); {agreement}")
    if result.forced is not None:
        lines.append(f"written because of --force: {result.forced}")
    return lines


declare(export_command, EXPORT, leading=[inspect.Parameter(
    "checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
    annotation=Annotated[str | None, typer.Argument(metavar="CHECKPOINT", help=CHECKPOINT_HELP,
                                                    autocompletion=complete_checkpoint)])],
        extra={"format": {"help": _FORMAT_HELP, **choice_settings(_format_names)}})
command("export")(export_command)
