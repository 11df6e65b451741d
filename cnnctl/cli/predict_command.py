"""``cnnctl predict``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cnnctl.cli._common import command, stderr_line
from cnnctl.errors import CnnctlError, UsageError


@command()
def predict(
    checkpoint_path: Annotated[str, typer.Argument(metavar="CHECKPOINT", help=".safetensors file or run folder")],
    paths: Annotated[list[str], typer.Argument(metavar="PATH...", help="image files or folders")],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="write CSV (or JSON) to this file; - for stdout \\[default: stdout]")] = None,
    topk: Annotated[int, typer.Option(min=1, help="how many top classes per image")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    strict: Annotated[bool, typer.Option(help="fail (exit 1) if any image cannot be read")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON instead of CSV")] = False,
    plot: Annotated[str | None, typer.Option(
        "--plot", metavar="PNG", help="also draw the first 64 images with their predicted classes (wrong ones in "
                                      "red where a parent folder names the true class)")] = None,
) -> None:
    """Classify images with a checkpoint; preprocessing comes from the checkpoint. Rows: path, label, class,
    probability, top-k."""
    import sys

    from cnnctl.engine.predict import (
        Predictor,
        find_images,
        load_for_inference,
        predictions_csv,
        predictions_json,
    )
    from cnnctl.fsutil import STDOUT, atomic_write_text, displayable, require_writable_file

    to_file = output is not None and output != STDOUT
    if to_file:  # checked before any work: a device, a FIFO, a folder or an unwritable place is refused now
        require_writable_file(output, option="--output", stdout_ok=True)
    if plot:
        require_writable_file(plot, option="--plot")
    model, _ = load_for_inference(checkpoint_path, device=device)
    files, skipped = find_images(paths)
    if not files:
        raise UsageError("no image files found in " + ", ".join(displayable(p) for p in paths),
                         hint="pass png/jpg/bmp/webp/tif files or folders that contain them")
    predictor = Predictor(model, model.cnnctl_meta, batch_size=batch_size, topk=topk)
    started = time.perf_counter()
    predictions = list(predictor.predict_files(files))
    seconds = time.perf_counter() - started
    failures = [p for p in predictions if p.error]
    if plot:
        from cnnctl.plots import plot_file_predictions

        plot_file_predictions(predictions, model.cnnctl_meta, plot)
    text = predictions_json(predictions) if json_output else predictions_csv(predictions)
    if to_file:
        atomic_write_text(output, text)  # type: ignore[arg-type]
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    rate = len(predictions) / seconds if seconds > 0 else float("inf")
    note = f", skipped {skipped} non-image files" if skipped else ""
    timings = predictor.timings
    stderr_line(f"predicted {len(predictions) - len(failures):,} of {len(predictions):,} images in {seconds:.2f}s "
                f"({rate:,.0f} images/s; decode {timings['decode_s']:.2f}s, inference {timings['inference_s']:.2f}s)"
                f"{note}" + (f"; wrote {output}" if to_file else ""))
    for failure in failures[:5]:
        stderr_line(f"  could not read {displayable(failure.error or '')}")
    if failures and strict:
        raise CnnctlError(f"{len(failures)} of {len(predictions)} images could not be read (--strict)")
