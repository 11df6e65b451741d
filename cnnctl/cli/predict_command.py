"""``cnnctl predict``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cnnctl.cli._common import TTA_HELP, command, print_json, stderr_line
from cnnctl.errors import CnnctlError, UsageError


@command()
def predict(
    checkpoint_path: Annotated[str, typer.Argument(metavar="CHECKPOINT", help=".safetensors file or run folder")],
    paths: Annotated[list[str], typer.Argument(metavar="PATH...", help="image files or folders")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="write CSV here \\[default: stdout]")] = None,
    topk: Annotated[int, typer.Option(min=1, help="how many top classes per image")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    strict: Annotated[bool, typer.Option(help="fail (exit 1) if any image cannot be read")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON instead of CSV")] = False,
    plot: Annotated[str | None, typer.Option(
        "--plot", metavar="PNG", help="also draw the first 64 images with their predicted classes (wrong ones in "
                                      "red where a parent folder names the true class)")] = None,
    tta: Annotated[str, typer.Option(metavar="[none|flip|crop|flip-crop]", help=TTA_HELP)] = "none",
) -> None:
    """Classify images with a checkpoint; preprocessing comes from the checkpoint. Rows: path, label, class,
    probability, top-k."""
    import csv
    import io
    import sys

    from cnnctl.engine.predict import Predictor, find_images, load_for_inference
    from cnnctl.tta import check_tta

    tta = check_tta(tta)
    model, _ = load_for_inference(checkpoint_path, device=device)
    files, skipped = find_images(paths)
    if not files:
        raise UsageError("no image files found in " + ", ".join(paths),
                         hint="pass png/jpg/bmp/webp/tif files or folders that contain them")
    predictor = Predictor(model, model.cnnctl_meta, batch_size=batch_size, topk=topk, tta=tta)
    started = time.perf_counter()
    predictions = list(predictor.predict_files(files))
    seconds = time.perf_counter() - started
    failures = [p for p in predictions if p.error]
    if plot:
        from cnnctl.plots import plot_file_predictions

        plot_file_predictions(predictions, model.cnnctl_meta, plot)
    if json_output:
        rows = [p.__dict__ for p in predictions]
        if output:
            import json

            from cnnctl.fsutil import atomic_write_text

            atomic_write_text(output, json.dumps(rows, indent=2) + "\n")
        else:
            print_json(rows)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "label", "class", "probability", "topk", "error"])
        for p in predictions:
            top = ";".join(f"{name}:{prob:.4f}" for _, name, prob in p.topk)
            probability = "" if p.probability is None else f"{p.probability:.6f}"
            writer.writerow([p.path, "" if p.label is None else p.label, p.class_name or "", probability, top,
                             p.error or ""])
        if output:
            from cnnctl.fsutil import atomic_write_text

            atomic_write_text(output, buffer.getvalue())
        else:
            sys.stdout.write(buffer.getvalue())
    rate = len(predictions) / seconds if seconds > 0 else float("inf")
    note = f", skipped {skipped} non-image files" if skipped else ""
    timings = predictor.timings
    stderr_line(f"predicted {len(predictions) - len(failures):,} of {len(predictions):,} images in {seconds:.2f}s "
                f"({rate:,.0f} images/s; decode {timings['decode_s']:.2f}s, inference {timings['inference_s']:.2f}s)"
                f"{note}" + (f"; wrote {output}" if output else ""))
    for failure in failures[:5]:
        stderr_line(f"  could not read {failure.error}")
    if failures and strict:
        raise CnnctlError(f"{len(failures)} of {len(predictions)} images could not be read (--strict)")
