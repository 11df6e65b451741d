"""``cnnctl probe``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import command, print_json, stderr_line
from cnnctl.recipe.options import MAX_IMAGE_SIDE


@command()
def probe(
    data: Annotated[str, typer.Option(help="a folder with one sub-folder per class (or train/ and val/ holding "
                                           "them)", show_default=False)],
    budget: Annotated[float, typer.Option(min=1, help="seconds for the whole ranking: every backbone gets the "
                                                      "same images, as many as the budget affords")] = 300.0,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", help="probe only this backbone (repeatable); it must be available offline",
        show_default=False)] = None,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", metavar="ARCH=FILE", help="also probe ARCH with the weights in FILE (repeatable)",
        show_default=False)] = None,
    val_split: Annotated[float | None, typer.Option(
        min=0, help="validation fraction held out of train when the folder has no val/ \\[default: 0.1]",
        show_default=False)] = None,
    img_size: Annotated[int | None, typer.Option(
        min=16, max=MAX_IMAGE_SIDE, help="centre crop to probe at (the resize scales with it, as in training) "
                                         "\\[default: each weights' own]", show_default=False)] = None,
    seed: Annotated[int, typer.Option(min=0, help="which images are held out and drawn")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="print the table as JSON")] = False,
) -> None:
    """Rank the pretrained backbones available offline by a quick linear probe on your images.

    Backbones: torchvision weights in torch's cache, timm weights in the Hugging Face cache, installed weights
    packages and --weights files. Prints backbone, weights source, validation accuracy and time, and the command
    that fine-tunes the best one."""
    from cnnctl.engine.device import resolve_device
    from cnnctl.probe import candidates_for, fine_tune_command
    from cnnctl.probe import probe as run_probe

    candidates = candidates_for(backbone or (), weights or (), stderr_line)  # a missing name: before any work
    stderr_line(f"probing {len(candidates)} backbone{'s' if len(candidates) != 1 else ''} within {budget:g}s: "
                + ", ".join(c.arch for c in candidates))

    def said(result: object) -> None:
        row = result.row()  # type: ignore[attr-defined]
        accuracy = "—" if row["val_accuracy"] is None else f"{row['val_accuracy']:.2%}"
        note = f" {row['note']}" if row["note"] else ""
        stderr_line(f"  {row['backbone']}: {accuracy} ({row['seconds']:.1f}s){note}")

    results = run_probe(data, candidates, budget=budget, seed=seed, val_split=val_split, batch_size=batch_size,
                        device=str(resolve_device(device)), img_size=img_size, log=lambda _: None,
                        on_result=said)
    best = results[0] if results and results[0].val_accuracy is not None else None
    if json_output:
        print_json({"results": [r.row() for r in results],
                    "command": fine_tune_command(best, data, img_size) if best else None})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("backbone", "weights", "val accuracy", "train / val images", "time", box=None, expand=False)
    for result in results:
        table.add_row(result.candidate.arch, result.candidate.source,
                      "—" if result.val_accuracy is None else f"{result.val_accuracy:.2%}",
                      f"{result.train_images:,} / {result.val_images:,}" if result.val_accuracy is not None
                      else result.note, f"{result.seconds:.1f}s")
    import sys

    # a pipe gets the full table, not one cut to 80 columns
    Console(width=None if sys.stdout.isatty() else 1000).print(table)
    if best is None:
        stderr_line("no backbone could be probed within the budget; raise --budget")
        raise typer.Exit(1)
    print(f"fine-tune the best: {fine_tune_command(best, data, img_size)}")
