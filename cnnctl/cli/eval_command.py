"""``cnnctl eval``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cnnctl.cli._common import (
    CHECKPOINT_HELP,
    THRESHOLDS_HELP,
    TTA_HELP,
    checkpoint_argument,
    command,
    complete_checkpoint,
    complete_dataset,
    print_json,
    stderr_line,
    wrap_fields,
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
    report_dir: Annotated[str | None, typer.Option(
        "--report", metavar="DIR", help="write an HTML report (DIR/index.html, self-contained) and report.json: "
                                        "metrics, confusion, top losses, confused pairs, calibration")] = None,
    label_issues: Annotated[bool, typer.Option(
        "--label-issues", help="rank the images whose given label the model finds least likely (cleanlab: "
                               "pip install 'cnnctl\\[labels]'); in the report and its label_issues.csv")] = False,
    top_losses: Annotated[int, typer.Option(min=0, help="images in the report's top-losses grid")] = 32,
    tta: Annotated[str, typer.Option(metavar="[none|flip|crop|flip-crop]", help=TTA_HELP)] = "none",
    thresholds: Annotated[str | None, typer.Option(metavar="T[,T...]", help=THRESHOLDS_HELP)] = None,
) -> None:
    """Loss, accuracy, top-k accuracy (k = 5, or the number of classes if fewer), balanced accuracy, macro-F1,
    per-class precision/recall/F1, the confusion matrix and the calibration error of a checkpoint;
    --report DIR shows why it is wrong, with pictures."""
    from cnnctl.fsutil import require_writable_folder
    from cnnctl.report import evaluate_and_report

    for folder, option in ((plots, "--plots"), (report_dir, "--report")):
        if folder is not None:  # before any work: an unwritable folder is found now, not after the evaluation
            require_writable_folder(folder, option=option)
    checkpoint_path = checkpoint_argument(checkpoint_path)

    report = evaluate_and_report(checkpoint_path, dataset=dataset, split=split, batch_size=batch_size, root=root,
                                 mirror=mirror, device=device, log=stderr_line, data_dir=data, plots_dir=plots,
                                 report_dir=report_dir, label_issues=label_issues, top_losses=top_losses,
                                 tta=tta, thresholds=thresholds)
    if json_output:
        print_json(report)
        return
    if report.get("task") == "multilabel":
        print_multilabel(report, tta)
        return
    from rich.console import Console
    from rich.table import Table

    classes = [row["class"] for row in report["per_class"]]
    top_k = report.get("top_k", 5)
    topk_accuracy = report.get(f"top{top_k}", report.get("top5"))
    console = Console()
    fields = [f"accuracy {report['accuracy']:.2%}", f"top-{top_k} {topk_accuracy:.2%}"]
    if "balanced_accuracy" in report:
        fields += [f"balanced accuracy {report['balanced_accuracy']:.2%}", f"macro-F1 {report['macro_f1']:.4f}"]
    fields += [f"loss {report['loss']:.4f}", f"ECE {report['calibration']['ece']:.4f}"]
    if tta != "none":
        fields.append(f"(test-time augmentation: {tta})")
    head = f"{report['arch']} on {evaluated_on(report)} ({report['count']:,} images):"
    console.print(wrap_fields(head, fields, console.width), highlight=False, soft_wrap=True)
    table = Table(title_justify="left")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        table.add_row(row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                      f"{row['support']:,}")
    table.add_row("macro avg", f"{report['macro_precision']:.4f}", f"{report['macro_recall']:.4f}",
                  f"{report['macro_f1']:.4f}", f"{report['count']:,}", style="bold")
    console.print(table)
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    confusion.add_column("")
    for name in classes:
        confusion.add_column(name[:8], justify="right")
    for name, counts in zip(classes, report["confusion"]):
        confusion.add_row(name[:12], *(str(count) for count in counts))
    console.print(confusion)
    if label_issues:
        print_label_issues(console, report["label_issues"], report["count"], saved=report_dir is not None)


def print_multilabel(report: dict[str, Any], tta: str) -> None:
    """The multi-label numbers: mAP, subset accuracy, F1, and a table of the labels."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    fields = [f"mAP {report['map']:.4f}", f"subset accuracy {report['subset_accuracy']:.2%}",
              f"micro-F1 {report['micro_f1']:.4f}", f"macro-F1 {report['macro_f1']:.4f}",
              f"loss {report['loss']:.4f}"]
    if tta != "none":
        fields.append(f"(test-time augmentation: {tta})")
    head = f"{report['arch']} on {evaluated_on(report)} ({report['count']:,} images, multi-label):"
    console.print(wrap_fields(head, fields, console.width), highlight=False, soft_wrap=True)
    table = Table(title=f"thresholds {report['threshold_source']}", title_justify="left")
    for column in ("label", "AP", "threshold", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for row in report["per_class"]:
        ap = row["average_precision"]
        table.add_row(row["class"], "—" if ap is None else f"{ap:.4f}", f"{row['threshold']:.3f}",
                      f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", f"{row['support']:,}")
    table.add_row("macro avg", f"{report['map']:.4f}", "", f"{report['macro_precision']:.4f}",
                  f"{report['macro_recall']:.4f}", f"{report['macro_f1']:.4f}", f"{report['count']:,}", style="bold")
    table.add_row("micro avg", "", "", f"{report['micro_precision']:.4f}", f"{report['micro_recall']:.4f}",
                  f"{report['micro_f1']:.4f}", "", style="bold")
    console.print(table)


ISSUES_PRINTED = 20
SPLIT_NAMES = {"test": "test split", "val": "validation split, held out in training", "train": "training split",
               "all": "all images"}


def evaluated_on(report: dict[str, Any]) -> str:
    """``mnist test split``, ``digits validation split, held out in training``: the images the numbers are of,
    as the evaluation chose them (a folder without test/ is evaluated on another split)."""
    from pathlib import Path

    name = Path(report["data"]).name if report.get("data") else report["dataset"]
    split = report["split"]
    return f"all images of {name}" if split == "all" else f"{name} {SPLIT_NAMES.get(split, split)}"


def print_label_issues(console: Any, issues: list[dict[str, Any]], count: int, *, saved: bool) -> None:
    """The first suspected label errors as a table; where the full list is."""
    from rich.table import Table

    table = Table(title=f"suspected label errors: {len(issues):,} of {count:,} images (least likely label first)",
                  title_justify="left")
    for column in ("rank", "image", "given", "p(given)", "model says", "p"):
        table.add_column(column, justify="right" if column in ("rank", "p(given)", "p") else "left")
    for rank, row in enumerate(issues[:ISSUES_PRINTED], start=1):
        table.add_row(str(rank), row.get("path") or f"#{row['index']}", row["given"], f"{row['p_given']:.4f}",
                      row["suggested"], f"{row['p_suggested']:.4f}")
    console.print(table)
    if len(issues) > ISSUES_PRINTED:
        where = "all of them are in the report's label_issues.csv" if saved else \
            "--report DIR writes all of them to DIR/label_issues.csv; --json prints them"
        stderr_line(f"{len(issues) - ISSUES_PRINTED:,} more not shown: {where}")
