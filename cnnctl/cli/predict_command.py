"""``cnnctl predict``."""

from __future__ import annotations

import time
from typing import Annotated, NamedTuple

import typer

from cnnctl.cli._common import (
    CHECKPOINT_HELP,
    THRESHOLDS_HELP,
    TTA_HELP,
    checkpoint_argument,
    command,
    complete_checkpoint,
    stderr_line,
)
from cnnctl.errors import CnnctlError, UsageError


class WeightsSource(NamedTuple):
    """Where published weights may come from (what ``--pretrained`` reads from a training configuration)."""

    weights_mirror: str | None
    offline: bool


def _pretrained_arguments(first: str | None, paths: list[str], arch: str | None, pretrained: str | None
                          ) -> tuple[str, str, list[str]]:
    """(architecture, weights, images) of ``ARCH --pretrained WEIGHTS IMAGES``, ``FILE --arch ARCH IMAGES`` and
    ``--arch ARCH --pretrained WEIGHTS IMAGES``."""
    if arch and pretrained:
        return arch, pretrained, [first, *paths] if first is not None else paths
    if first is None:
        raise UsageError("name the architecture and the images: cnnctl predict ARCH --pretrained imagenet PATH..."
                         if pretrained else "name the weights file and the images: cnnctl predict FILE --arch "
                                            "ARCH PATH...")
    if pretrained:
        from pathlib import Path

        if Path(first).exists():
            raise UsageError(f"--pretrained needs the architecture before the images; {first} is a file",
                             hint=f"cnnctl predict ARCH --pretrained {pretrained} PATH... (e.g. tv:resnet50)")
        return first, str(pretrained), paths
    return str(arch), first, paths


@command()
def predict(
    checkpoint_path: Annotated[str | None, typer.Argument(
        metavar="CHECKPOINT", help=CHECKPOINT_HELP, autocompletion=complete_checkpoint, show_default=False)] = None,
    paths: Annotated[list[str] | None, typer.Argument(metavar="PATH", help="image files or folders",
                                                      show_default=False)] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="write CSV (or JSON) to this file; - for stdout \\[default: stdout]")] = None,
    topk: Annotated[int, typer.Option(min=1, help="how many top classes per image")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    strict: Annotated[bool, typer.Option(help="fail (exit 1) if any image cannot be read")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON instead of CSV")] = False,
    max_pixels: Annotated[int | None, typer.Option(
        min=1, help="refuse images with more pixels (read from the header) \\[default: 89,478,485]")] = None,
    plot: Annotated[str | None, typer.Option(
        "--plot", metavar="PNG", help="also draw the first 64 images with their predicted classes (wrong ones in "
                                      "red where a parent folder names the true class)")] = None,
    tta: Annotated[str, typer.Option(metavar="[none|flip|crop|flip-crop]", help=TTA_HELP)] = "none",
    thresholds: Annotated[str | None, typer.Option(metavar="T[,T...]", help=THRESHOLDS_HELP)] = None,
    pretrained: Annotated[str | None, typer.Option(
        metavar="WEIGHTS", help="classify with ImageNet weights, no training: the first argument is then the "
                                "architecture (cnnctl predict tv:resnet50 --pretrained imagenet photo.jpg); "
                                "imagenet, a weights name, or a .pth/.safetensors file")] = None,
    arch: Annotated[str | None, typer.Option(
        help="the architecture of a weights file given as the first argument (cnnctl predict lite0.pth --arch "
             "timm:tf_efficientnet_lite0 photo.jpg)")] = None,
    weights_mirror: Annotated[str | None, typer.Option(
        help="with --pretrained: URL or folder tried before the official URL \\[env: CNNCTL_WEIGHTS_MIRROR]")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", envvar="CNNCTL_OFFLINE", help="open no network connection (weights must be on disk)")] = False,
) -> None:
    """Classify images with a checkpoint, or with ImageNet weights (--pretrained).

    Preprocessing comes from the checkpoint (or the weights). Rows: path, label, class, probability, top-k. \
Images in folders named after classes (digits/7/x.png) also give the accuracy."""
    import sys

    from cnnctl.engine.predict import (
        Predictor,
        find_images,
        folder_accuracy,
        load_for_inference,
        parse_thresholds,
        predictions_csv,
        predictions_json,
    )
    from cnnctl.engine.runs import is_checkpoint_like
    from cnnctl.engine.tta import check_tta
    from cnnctl.fsutil import STDOUT, atomic_write_text, displayable, require_writable_file
    from cnnctl.progress import counting, plural, rate_text

    tta = check_tta(tta)

    to_file = output is not None and output != STDOUT
    if to_file:  # checked before any work: a device, a FIFO, a folder or an unwritable place is refused now
        require_writable_file(output, option="--output", stdout_ok=True)
    if plot:
        require_writable_file(plot, option="--plot")
    if pretrained or arch:
        arch, pretrained, paths = _pretrained_arguments(checkpoint_path, paths or [], arch, pretrained)
    elif checkpoint_path is not None and not is_checkpoint_like(checkpoint_path):  # images only: the latest run
        checkpoint_path, paths = None, [checkpoint_path, *(paths or [])]
    if not paths:
        raise UsageError("name the images to classify", hint="cnnctl predict [CHECKPOINT] PATH... (files or folders)")
    if pretrained and arch:
        from cnnctl.models.imagenet_classifier import imagenet_classifier

        if offline:  # for everything this process does, as `train --offline`
            import os

            os.environ["CNNCTL_OFFLINE"] = "1"
        model = imagenet_classifier(arch, pretrained, device=device, log=stderr_line,
                                    config=WeightsSource(weights_mirror, offline))
    else:
        model, _ = load_for_inference(checkpoint_argument(checkpoint_path), device=device)
    meta = model.cnnctl_meta
    given = parse_thresholds(thresholds, meta.classes, task=getattr(meta, "task", None))
    if plot and getattr(meta, "multilabel", False):
        raise UsageError("--plot draws one class per image; it does not apply to multi-label checkpoints")
    files, skipped = find_images(paths)
    if not files:
        raise UsageError("no image files found in " + ", ".join(displayable(p) for p in paths),
                         hint="pass png/jpg/bmp/webp/tif files or folders that contain them")
    predictor = Predictor(model, model.cnnctl_meta, batch_size=batch_size, topk=topk, max_pixels=max_pixels,
                          tta=tta, thresholds=given)
    predictor.import_decoders()  # start-up, not prediction: outside the time reported
    started = time.perf_counter()
    predictions = []
    with counting(len(files), "predicting") as bar:
        for prediction in predictor.predict_files(files):
            predictions.append(prediction)
            bar.advance()
    seconds = time.perf_counter() - started
    failures = [p for p in predictions if p.error]
    if plot:
        from cnnctl.plots import plot_file_predictions

        plotted = plot_file_predictions(predictions, model.cnnctl_meta, plot, max_pixels=max_pixels)
        stderr_line(f"wrote {plotted}")
    multilabel = predictor.multilabel
    text = predictions_json(predictions, multilabel) if json_output else predictions_csv(predictions, multilabel)
    if to_file:
        atomic_write_text(output, text)  # type: ignore[arg-type]
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    note = f", skipped {skipped} non-image files" if skipped else ""
    timings = predictor.timings
    rate = rate_text(len(predictions), seconds, "images/s")
    stderr_line(f"predicted {len(predictions) - len(failures):,} of {len(predictions):,} "
                f"image{'s' if len(predictions) != 1 else ''} in {seconds:.2f}s ({rate + '; ' if rate else ''}"
                f"decode {timings['decode_s']:.2f}s, inference {timings['inference_s']:.2f}s)"
                f"{note}" + (f"; wrote {output}" if to_file else ""))
    accuracy = None if multilabel else folder_accuracy(predictions, model.cnnctl_meta.classes)
    if accuracy is not None:
        correct, counted = accuracy
        others = len(predictions) - len(failures) - counted
        stderr_line(f"accuracy {correct / counted:.2%} ({correct:,} of {counted:,} images whose folder names their "
                    f"class{f'; {others:,} others not counted' if others else ''})")
    warning = predictor.input_warning()
    if warning:
        stderr_line(warning)
    if failures:  # each error names its file and why: "x.png: not a readable image (...)"
        first = ", the first 5:" if len(failures) > 5 else ":"
        stderr_line(f"could not read {plural(len(failures), 'image')}{first}")
    for failure in failures[:5]:
        stderr_line(f"  {displayable(failure.error or '')}")
    if failures and strict:
        raise CnnctlError(f"{len(failures)} of {len(predictions)} images could not be read (--strict)")
