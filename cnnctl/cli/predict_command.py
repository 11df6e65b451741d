"""``cnnctl predict``."""

from __future__ import annotations

import inspect
import time
from typing import Annotated, Any, NamedTuple

import typer

from cnnctl.cli._common import (
    CHECKPOINT_HELP,
    checkpoint_argument,
    command,
    complete_checkpoint,
    stderr_line,
)
from cnnctl.cli.params import declare
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.fsutil import STDOUT, atomic_write_text, displayable, require_writable_file
from cnnctl.progress import counting, plural, rate_text
from cnnctl.recipe.commands import PREDICT, command_values


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


def predict(checkpoint_path: str | None = None, paths: list[str] | None = None, **params: Any) -> None:
    """Classify images with a checkpoint, or with ImageNet weights (--pretrained).

    Preprocessing comes from the checkpoint (or the weights). Rows: path, label, class, probability, top-k. \
Images in folders named after classes (digits/7/x.png) also give the accuracy."""
    import sys

    from cnnctl.engine.predict import (
        Predictor,
        find_images,
        folder_accuracy,
        load_for_inference,
        parse_label_count,
        parse_thresholds,
        predictions_csv,
        predictions_json,
    )
    from cnnctl.engine.runs import is_checkpoint_like

    values = command_values(PREDICT, params)
    output, plot, tta = values["output"], values["plot"], values["tta"]
    pretrained, arch, device = values["pretrained"], values["arch"], values["device"]

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

        if values["offline"]:  # for everything this process does, as `train --offline`
            import os

            os.environ["CNNCTL_OFFLINE"] = "1"
        model = imagenet_classifier(arch, pretrained, device=device, log=stderr_line,
                                    config=WeightsSource(values["weights_mirror"], values["offline"]))
    else:
        model, _ = load_for_inference(checkpoint_argument(checkpoint_path), device=device)
    meta = model.cnnctl_meta
    given = parse_thresholds(values["thresholds"], meta.classes, task=getattr(meta, "task", None))
    label_count = parse_label_count(values["label_count"], meta)
    if plot and getattr(meta, "multilabel", False):
        raise UsageError("--plot draws one class per image; it does not apply to multi-label checkpoints")
    files, skipped = find_images(paths)
    if not files:
        raise UsageError("no image files found in " + ", ".join(displayable(p) for p in paths),
                         hint="pass png/jpg/bmp/webp/tif files or folders that contain them")
    predictor = Predictor(model, model.cnnctl_meta, batch_size=values["batch_size"], topk=values["topk"],
                          max_pixels=values["max_pixels"], tta=tta, reject_below=values["reject_below"],
                          thresholds=given, label_count=label_count)
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

        plotted = plot_file_predictions(predictions, model.cnnctl_meta, plot, max_pixels=values["max_pixels"])
        stderr_line(f"wrote {plotted}")
    multilabel = predictor.multilabel
    text = (predictions_json(predictions, multilabel) if values["json_output"]
            else predictions_csv(predictions, multilabel))
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
    if predictor.reject_below is not None:
        rejected = sum(p.rejected for p in predictions)
        source = "--reject-below" if values["reject_below"] is not None else "the checkpoint's threshold"
        stderr_line(f"unknown: {rejected:,} of {len(predictions) - len(failures):,} images (top probability below "
                    f"{predictor.reject_below:.4f}, {source})")
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
    if failures and values["strict"]:
        raise CnnctlError(f"{len(failures)} of {len(predictions)} images could not be read (--strict)")


declare(predict, PREDICT, leading=[
    inspect.Parameter("checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        str | None, typer.Argument(metavar="CHECKPOINT", help=CHECKPOINT_HELP, autocompletion=complete_checkpoint,
                                   show_default=False)]),
    inspect.Parameter("paths", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        list[str] | None, typer.Argument(metavar="PATH", help="image files or folders", show_default=False)])])
command()(predict)
