"""``cnnctl export``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cnnctl.cli._common import CHECKPOINT_HELP, checkpoint_argument, command, complete_checkpoint, print_json
from cnnctl.exporter import CALIBRATION_IMAGES, FORMATS, MAX_DROP
from cnnctl.options import choice_settings

if TYPE_CHECKING:
    from cnnctl.exporter import ExportResult


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
    data: Annotated[str | None, typer.Option(
        help="a folder of class sub-folders to check (and calibrate) on \\[default: the checkpoint's test split]")]
        = None,
    max_drop: Annotated[float, typer.Option(
        help="accuracy points the export may lose against PyTorch before it is refused (0-100)")] = MAX_DROP,
    force: Annotated[bool, typer.Option(
        "--force", help="write the export even when it fails the accuracy check (and say so)")] = False,
    calibration_images: Annotated[int, typer.Option(
        help="training images an int8 format calibrates on")] = CALIBRATION_IMAGES,
    calibration_method: Annotated[str | None, typer.Option(
        metavar="[minmax|entropy|percentile]", help="how onnx-int8 sets its ranges \\[default: minmax]")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Export a checkpoint to ONNX (FP32, FP16, INT8), OpenVINO IR (FP32, FP16, INT8) or TorchScript.

    The export is run in its own runtime on the checkpoint's test split (or --data) beside PyTorch: exact formats \
must give PyTorch's outputs (within 1e-4; OpenVINO 1e-3), and no export may lose more than --max-drop accuracy \
points, or nothing is written. Its preprocessing is written beside it as JSON."""
    from cnnctl.exporter import export

    checkpoint_path = checkpoint_argument(checkpoint_path)
    result = export(checkpoint_path, format=format, output=output, dynamic_batch=dynamic_batch, opset=opset,
                    root=root, data=data, max_drop=max_drop, force=force, calibration_images=calibration_images,
                    calibration_method=calibration_method)
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
                     f"{result.max_abs_diff:.2e} (tolerance {result.tolerance:g})")
    else:
        lines.append(f"compared on {result.verified_on} in {where}")
    if comparison is not None:
        k = comparison.k
        agreement = (f"top-1 agreement {100 * comparison.top1_agreement:.2f}%, top-{k} agreement "
                     f"{100 * comparison.topk_agreement:.2f}%, largest probability difference "
                     f"{comparison.max_prob_diff:.2g}")
        if comparison.accuracy is not None:
            reference = 100 * comparison.reference_accuracy
            lines.append(f"accuracy {100 * comparison.accuracy:.2f}% (PyTorch {reference:.2f}%, "
                         f"{0.0 - comparison.drop:+.2f} points; --max-drop {result.max_drop:g}); {agreement}")
        else:
            lines.append(f"accuracy not checked (no labelled images); {agreement}")
    if result.forced is not None:
        lines.append(f"written because of --force: {result.forced}")
    return lines
