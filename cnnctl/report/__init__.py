"""``cnnctl eval``'s full evaluation: the metrics, calibration, and on request the HTML report (``--report DIR``:
index.html + report.json) and suspected label errors (``--label-issues``, with label_issues.csv in the report).

:func:`evaluate_and_report` returns the same dictionary that ``eval --json`` prints and report.json holds.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cnnctl.checkpoint import existing_checkpoint, read_meta
from cnnctl.engine.calibration import stored_temperature
from cnnctl.engine.evaluate import evaluate, open_evaluation
from cnnctl.engine.multilabel import STORED, parse_label_count, parse_thresholds
from cnnctl.engine.tta import check_tta
from cnnctl.errors import UsageError
from cnnctl.fsutil import atomic_write_text
from cnnctl.report.multilabel import multilabel_report
from cnnctl.report.page import write_page

TOP_LOSSES = 32
ISSUES_SHOWN = 48  # thumbnails in the page; label_issues.csv has them all


def evaluate_and_report(checkpoint_path: Any, *, dataset: str | None = None, split: str = "test",
                        batch_size: int = 1000, root: str | None = None, mirror: str | None = None,
                        device: str = "auto", log: Any = None, data_dir: str | None = None,
                        plots_dir: Any = None, report_dir: Any = None, label_issues: bool = False,
                        top_losses: int = TOP_LOSSES, tta: str = "none",
                        thresholds: str | None = None, label_count: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint in one pass over the split and return every number as a JSON-able dict.
    ``tta``: average the softmax over views of each image (:mod:`cnnctl.engine.tta`).

    Always: loss, top-1/top-5 accuracy, per-class precision/recall/F1, the confusion matrix and calibration
    (ECE over 15 bins). ``label_issues``: the images whose given label is suspect, ranked. ``report_dir``: also
    the top losses and most confused pairs, written with everything else to ``index.html`` and ``report.json``.
    A multi-label checkpoint gets mAP, subset accuracy and per-label numbers instead (:mod:`cnnctl.report.multilabel`)
    at its thresholds, or at ``thresholds`` (one number, or one per label), within its label count, or
    ``label_count`` (any, N or MIN-MAX labels per image).
    """
    from cnnctl.report import analysis

    tta = check_tta(tta)  # before any work

    if label_issues:
        analysis.require_cleanlab()
    if report_dir is not None:
        _check_report_dir(Path(report_dir))
        from cnnctl import plots

        plots.require()
    if top_losses < 0:
        raise UsageError(f"--top-losses must be 0 or more, got {top_losses}")
    needs_meta = thresholds is not None or label_count is not None or label_issues
    meta = read_meta(existing_checkpoint(checkpoint_path)) if needs_meta else None
    given = parse_thresholds(thresholds, meta.classes, task=meta.task) if meta is not None else None
    count = parse_label_count(label_count, meta) if meta is not None else STORED
    if label_issues and meta is not None and meta.multilabel:
        raise UsageError("--label-issues ranks the one given class of each image; it applies to single-label "
                         "checkpoints, not to this multi-label one")
    opened = open_evaluation(checkpoint_path, dataset=dataset, split=split, batch_size=batch_size, root=root,
                             mirror=mirror, device=device, log=log, data_dir=data_dir)
    meta, data = opened.meta, opened.data
    split = data.split or split  # a folder without test/ is evaluated on another split, which this names
    if meta.multilabel:
        if plots_dir is not None:
            raise UsageError("--plots draws a confusion matrix of single-label checkpoints",
                             hint="use --report DIR for a multi-label checkpoint")
        return multilabel_report(opened, checkpoint=checkpoint_path, dataset=dataset, split=split, tta=tta,
                                 thresholds=given, label_count=count, report_dir=report_dir,
                                 top_losses=top_losses, log=log)
    classes = list(meta.classes)
    collector = analysis.OutputCollector(keep=label_issues or report_dir is not None)
    temperature = stored_temperature(meta)
    scaled = analysis.ScaledCalibration(temperature) if meta.calibration and tta == "none" else None

    def on_batch(logits: Any, labels: Any) -> None:
        collector(logits, labels)
        if scaled is not None:
            scaled(logits, labels)

    result = evaluate(opened.model, opened.batches, meta.num_classes, on_batch=on_batch, tta=tta)
    report: dict[str, Any] = {"checkpoint": str(checkpoint_path), "arch": meta.arch,
                              "dataset": dataset or meta.dataset, "split": split, "tta": tta,
                              **({"data": str(Path(data.source).parent)} if data.split else {}),
                              **result.as_dict(classes),
                              "calibration": collector.calibration.result()}
    if scaled is not None:  # a calibrated checkpoint: the numbers above are of the raw logits, these after T
        report["calibrated"] = scaled.result(meta.calibration)
    outputs = collector.outputs() if collector.keep else None
    if label_issues and outputs is not None:
        if split == "train" and log:
            log("note: the model trained on these images, so it tends to agree with their labels; label errors "
                "show best on images it has not seen (--split val or test, or --data)")
        report["label_issues"] = [_issue_row(index, quality, outputs, data, classes)
                                  for index, quality in analysis.label_issues(outputs)]
    if plots_dir is not None:
        from cnnctl import plots

        plots.require()
        plots.evaluation_plots(plots_dir, opened.model, data, meta.preprocessing, classes, result.confusion,
                               split=split)
    if report_dir is not None and outputs is not None:
        report["top_losses"] = [_sample_row(i, outputs, data, classes)
                                for i in analysis.top_losses(outputs, top_losses)]
        report["confused_pairs"] = [
            {**pair, "true": classes[pair["true"]], "predicted": classes[pair["predicted"]],
             "true_index": pair["true"], "predicted_index": pair["predicted"]}
            for pair in analysis.confused_pairs(result.confusion, outputs)]
        write_report(Path(report_dir), report, data, outputs, classes)
        if log:
            log(f"report: {Path(report_dir) / 'index.html'}")
    return report


def _check_report_dir(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--report {directory} is a file, not a folder", hint="pass a folder to write the report to")


def _sample_row(index: int, outputs: Any, data: Any, classes: list[str]) -> dict[str, Any]:
    true = int(outputs.labels[index])
    predicted = int(outputs.predicted[index])
    row = {"index": index, "true": classes[true], "predicted": classes[predicted],
           "p_true": float(outputs.probabilities[index, true]),
           "p_predicted": float(outputs.probabilities[index, predicted]), "loss": float(outputs.losses[index])}
    if data.paths:
        row["path"] = data.paths[index]
    return row


def _issue_row(index: int, quality: float, outputs: Any, data: Any, classes: list[str]) -> dict[str, Any]:
    row = _sample_row(index, outputs, data, classes)
    return {"index": index, **({"path": row["path"]} if "path" in row else {}), "given": row["true"],
            "suggested": row["predicted"], "p_given": row["p_true"], "p_suggested": row["p_predicted"],
            "quality": quality}


def label_issues_csv(issues: list[dict[str, Any]]) -> str:
    """The suspected label errors as CSV, one row per image, the least likely label first."""
    buffer = io.StringIO()
    columns = ["rank", "index", "path", "given", "suggested", "p_given", "p_suggested"]
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for rank, row in enumerate(issues, start=1):
        writer.writerow({**row, "rank": rank, "path": row.get("path", ""), "p_given": f"{row['p_given']:.6f}",
                         "p_suggested": f"{row['p_suggested']:.6f}"})
    return buffer.getvalue()


def write_report(directory: Path, report: dict[str, Any], data: Any, outputs: Any, classes: list[str]) -> Path:
    """``index.html``, ``report.json`` and (with label issues) ``label_issues.csv`` in ``directory``."""
    import torch

    confusion = torch.tensor(report["confusion"], dtype=torch.float64)
    normalised = (confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)).tolist()
    page_report = {**report, "confusion_normalized": normalised, "summary": summary_cards(report),
                   "label_issues_shown": ISSUES_SHOWN}
    directory.mkdir(parents=True, exist_ok=True)
    if report.get("label_issues") is not None:
        atomic_write_text(directory / "label_issues.csv", label_issues_csv(report["label_issues"]))
    stored = {key: value for key, value in page_report.items() if key not in ("summary", "label_issues_shown")}
    atomic_write_text(directory / "report.json", json.dumps(stored, indent=2) + "\n")
    return write_page(directory, page_report, data, outputs, classes)


def summary_cards(report: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(key in report.json, label, value) of the headline numbers, in the order the page shows them."""
    k = report.get("top_k", 5)
    topk_key = f"top{k}" if f"top{k}" in report else "top5"
    cards = [("accuracy", "accuracy (top-1)", report["accuracy"]), (topk_key, f"top-{k} accuracy", report[topk_key])]
    if "balanced_accuracy" in report:  # where the evaluation computes it
        cards.append(("balanced_accuracy", "balanced accuracy", report["balanced_accuracy"]))
    cards += [("loss", "loss (cross-entropy)", report["loss"]),
             ("macro_precision", "macro precision", report["macro_precision"]),
             ("macro_recall", "macro recall", report["macro_recall"]),
             ("macro_f1", "macro F1", report["macro_f1"]),
             ("ece", "expected calibration error", report["calibration"]["ece"])]
    return cards
