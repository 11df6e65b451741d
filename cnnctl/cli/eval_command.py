"""``cnnctl eval``."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from cnnctl.cli._common import (
    CHECKPOINT_HELP,
    checkpoint_argument,
    command,
    complete_checkpoint,
    complete_dataset,
    print_json,
    stderr_line,
    wrap_fields,
)
from cnnctl.cli.params import declare
from cnnctl.fsutil import require_writable_folder
from cnnctl.recipe.commands import EVAL, command_values


def eval_command(checkpoint_path: str | None = None, **params: Any) -> None:
    """Loss, accuracy, top-k accuracy (k = 5, or the number of classes if fewer), balanced accuracy, macro-F1,
    per-class precision/recall/F1, the confusion matrix and the calibration error of a checkpoint;
    --report DIR shows why it is wrong, with pictures."""
    from cnnctl.report import evaluate_and_report

    values = command_values(EVAL, params)
    for option in ("plots", "report"):
        if values[option] is not None:  # before any work: an unwritable folder is found now, not after the evaluation
            require_writable_folder(values[option], option="--" + option)
    checkpoint_path = checkpoint_argument(checkpoint_path)

    report = evaluate_and_report(checkpoint_path, dataset=values["dataset"], split=values["split"],
                                 batch_size=values["batch_size"], root=values["root"], mirror=values["mirror"],
                                 device=values["device"], log=stderr_line, data_dir=values["data"],
                                 plots_dir=values["plots"], report_dir=values["report"],
                                 label_issues=values["label_issues"], top_losses=values["top_losses"],
                                 tta=values["tta"], thresholds=values["thresholds"],
                                 label_count=values["label_count"])
    tta = values["tta"]
    if values["json_output"]:
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
    if "calibrated" in report:  # cnnctl calibrate stored a temperature
        after = report["calibrated"]
        fields += [f"calibrated (T {after['temperature']:.3f}): loss {after['loss']:.4f}",
                   f"ECE {after['ece']:.4f}"]
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
    if values["label_issues"]:
        print_label_issues(console, report["label_issues"], report["count"], saved=values["report"] is not None)


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
    from cnnctl.engine.multilabel import describe_label_count

    count = report.get("label_count")
    table = Table(title=f"thresholds {report['threshold_source']}; decisions keep to "
                        f"{describe_label_count(tuple(count) if count else None)} per image", title_justify="left")
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


declare(eval_command, EVAL, leading=[inspect.Parameter(
    "checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
    annotation=Annotated[str | None, typer.Argument(metavar="CHECKPOINT", help=CHECKPOINT_HELP,
                                                    autocompletion=complete_checkpoint)])],
        completions={"dataset": complete_dataset})
command("eval")(eval_command)


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
