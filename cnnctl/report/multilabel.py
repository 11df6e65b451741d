"""``cnnctl eval`` of a multi-label checkpoint: mAP, subset accuracy, micro/macro F1, per-label average precision,
threshold, precision, recall and F1, and with ``--report DIR`` a self-contained HTML page (precision-recall curves,
the images with the highest loss) beside report.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnctl.engine.multilabel import STORED, evaluate_multilabel
from cnnctl.fsutil import atomic_write_text
from cnnctl.plots import _figure
from cnnctl.report.page import figure_uri, image_uri, percent

TEMPLATE = "template_multilabel.html.j2"


def multilabel_report(opened: Any, *, checkpoint: Any, dataset: str | None, split: str, tta: str,
                      thresholds: Sequence[float] | None = None, label_count: Any = STORED,
                      report_dir: Any = None, top_losses: int = 32, log: Any = None) -> dict[str, Any]:
    """Evaluate an opened multi-label checkpoint at its thresholds (or ``thresholds``) and label count (or
    ``label_count``, :func:`~cnnctl.engine.multilabel.parse_label_count`'s) and return the numbers
    ``eval --json`` prints; with ``report_dir``, also write index.html and report.json there."""
    meta, data = opened.meta, opened.data
    classes = list(meta.classes)
    result = evaluate_multilabel(opened.model, opened.batches, meta.num_classes, tta=tta,
                                 thresholds=thresholds if thresholds is not None else meta.resolved_thresholds,
                                 label_count=meta.label_count_range if label_count == STORED else label_count)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "arch": meta.arch, "dataset": dataset or meta.dataset,
                              "split": split, "tta": tta,
                              **({"data": str(Path(data.source).parent)} if data.split else {}),
                              "threshold_source": "given with --thresholds" if thresholds is not None
                              else "tuned on the validation split in training",
                              **result.as_dict(classes)}
    if report_dir is not None:
        losses = per_image_losses(result.probabilities, result.targets)
        order = sorted(range(result.count), key=lambda i: -losses[i])[:top_losses]
        report["top_losses"] = [_sample_row(i, result, data, classes, losses[i]) for i in order]
        write_report(Path(report_dir), report, data, result, classes)
        if log:
            log(f"report: {Path(report_dir) / 'index.html'}")
    return report


def per_image_losses(probabilities: Any, targets: Any) -> list[float]:
    """Each image's binary cross-entropy summed over its labels."""
    import torch

    p = probabilities.double().clamp(1e-7, 1 - 1e-7)
    loss = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).sum(dim=1)
    return loss.tolist()


def _names(row: Any, classes: Sequence[str]) -> list[str]:
    return [classes[i] for i in row.nonzero().flatten().tolist()]


def _sample_row(index: int, result: Any, data: Any, classes: Sequence[str], loss: float) -> dict[str, Any]:
    true, predicted = _names(result.targets[index] > 0.5, classes), _names(result.predicted[index], classes)
    row: dict[str, Any] = {"index": index, "true": true, "predicted": predicted, "loss": loss,
                           "probabilities": {name: float(p) for name, p in zip(classes, result.probabilities[index])}}
    if data.paths:
        row["path"] = data.paths[index]
    return row


def summary_cards(report: dict[str, Any]) -> list[tuple[str, str, float]]:
    return [("map", "mAP (mean average precision)", report["map"]),
            ("subset_accuracy", "subset accuracy", report["subset_accuracy"]),
            ("micro_f1", "micro F1", report["micro_f1"]), ("macro_f1", "macro F1", report["macro_f1"]),
            ("balanced_accuracy", "balanced accuracy (mean over labels)", report["balanced_accuracy"]),
            ("loss", "loss (binary cross-entropy)", report["loss"])]


def precision_recall_figure(probabilities: Any, targets: Any, classes: Sequence[str], average_precision: list[float],
                            limit: int = 20) -> Any:
    """Each label's precision against recall as its threshold falls (the first ``limit`` labels)."""
    import torch

    figure = _figure(7.5, 5.5)
    axis = figure.subplots(1, 1)
    for c, name in enumerate(classes[:limit]):
        truth = targets[:, c] > 0.5
        if not bool(truth.any()):
            continue
        order = torch.argsort(probabilities[:, c], descending=True, stable=True)
        hits = truth[order].double()
        true_positives = torch.cumsum(hits, 0)
        precision = true_positives / torch.arange(1, len(hits) + 1, dtype=torch.float64)
        recall = true_positives / hits.sum()
        axis.plot(recall.numpy(), precision.numpy(), label=f"{name} (AP {average_precision[c]:.3f})", linewidth=1.2)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left", ncol=2)
    figure.tight_layout()
    return figure


def write_report(directory: Path, report: dict[str, Any], data: Any, result: Any, classes: Sequence[str]) -> Path:
    """``index.html`` and ``report.json`` in ``directory``."""
    import jinja2

    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "report.json", json.dumps(report, indent=2) + "\n")
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["percent"] = percent
    losses = []
    for row in report.get("top_losses", []):
        index = row["index"]
        losses.append({"index": index, "uri": image_uri(data.images[index]), "loss": row["loss"],
                       "true": ", ".join(row["true"]), "predicted": ", ".join(row["predicted"]),
                       "wrong": set(row["true"]) != set(row["predicted"]),
                       "name": Path(data.paths[index]).name if data.paths else f"#{index}",
                       "path": data.paths[index] if data.paths else None})
    curves = precision_recall_figure(result.probabilities, result.targets, classes, result.average_precision)
    html = environment.get_template(TEMPLATE).render(report={**report, "summary": summary_cards(report)},
                                                     classes=list(classes), losses=losses,
                                                     curves_uri=figure_uri(curves))
    path = directory / "index.html"
    atomic_write_text(path, html)
    return path
