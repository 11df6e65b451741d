"""Classification metrics from a confusion matrix: pure functions, easy to check independently."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``matrix[true, predicted]`` counts (int64)."""
    import torch

    flat = targets.to(torch.int64) * num_classes + predictions.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_report(confusion: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, and their macro averages (0 where undefined)."""
    matrix = confusion.to("cpu").double()
    true_positive = matrix.diagonal()
    predicted = matrix.sum(0)
    actual = matrix.sum(1)
    precision = (true_positive / predicted).nan_to_num(0.0)
    recall = (true_positive / actual).nan_to_num(0.0)
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0.0)
    rows = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i, name in enumerate(classes)
    ]
    return {
        "per_class": rows,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
