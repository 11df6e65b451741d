"""``cnnctl eval``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import (
    CHECKPOINT_HELP,
    TTA_HELP,
    checkpoint_argument,
    command,
    complete_checkpoint,
    complete_dataset,
    print_json,
    stderr_line,
)
from cnnctl.options import choice_settings


@command("eval")
def eval_command(
    checkpoint_path: Annotated[str | None, typer.Argument(
        metavar="CHECKPOINT", help=CHECKPOINT_HELP, autocompletion=complete_checkpoint)] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset \\[default: the checkpoint's]",
                                                autocompletion=complete_dataset)] = None,
    split: Annotated[str, typer.Option(**choice_settings(lambda: ("test", "val", "train")),
                                       help="val: as held out in training")] = "test",
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 1000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    root: Annotated[str | None, typer.Option(help="data folder \\[env: CNNCTL_DATA]")] = None,
    mirror: Annotated[str | None, typer.Option(help="dataset mirror \\[env: CNNCTL_MIRROR]")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    data: Annotated[str | None, typer.Option(help="a folder of class sub-folders to evaluate on \\[default: the "
                                                  "checkpoint's folder, for folder runs]")] = None,
    plots: Annotated[str | None, typer.Option(
        "--plots", metavar="DIR", help="write confusion.png and predictions.png into this folder")] = None,
    tta: Annotated[str, typer.Option(metavar="[none|flip|crop|flip-crop]", help=TTA_HELP)] = "none",
) -> None:
    """Loss, top-1/top-5 accuracy, per-class precision/recall/F1 and the confusion matrix of a checkpoint."""
    from cnnctl.engine.evaluate import evaluate_checkpoint
    from cnnctl.fsutil import require_writable_folder

    if plots is not None:  # before any work: an unwritable folder is found now, not after the evaluation
        require_writable_folder(plots, option="--plots")
    checkpoint_path = checkpoint_argument(checkpoint_path)

    result, meta = evaluate_checkpoint(checkpoint_path, dataset=dataset, split=split, batch_size=batch_size,
                                       root=root, mirror=mirror, device=device, log=stderr_line, data_dir=data,
                                       plots_dir=plots, tta=tta)
    report = {"checkpoint": checkpoint_path, "arch": meta.arch, "dataset": dataset or meta.dataset, "split": split,
              "tta": tta, **result.as_dict(meta.classes)}
    if json_output:
        print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{meta.arch} on {report['dataset']} {split} ({result.count:,} images): "
                  f"accuracy {result.top1:.2%}  top-5 {result.top5:.2%}  loss {result.loss:.4f}"
                  + (f"  (test-time augmentation: {tta})" if tta != "none" else ""), highlight=False,
                  soft_wrap=True)
    table = Table(title_justify="left")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        table.add_row(row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                      f"{row['support']:,}")
    table.add_row("macro avg", f"{report['macro_precision']:.4f}", f"{report['macro_recall']:.4f}",
                  f"{report['macro_f1']:.4f}", f"{result.count:,}", style="bold")
    console.print(table)
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    confusion.add_column("")
    for name in meta.classes:
        confusion.add_column(name[:8], justify="right")
    for name, counts in zip(meta.classes, report["confusion"]):
        confusion.add_row(name[:12], *(str(count) for count in counts))
    console.print(confusion)
