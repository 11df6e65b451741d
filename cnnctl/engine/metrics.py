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
    """Precision, recall, F1 and support per class (0 where undefined), and their macro averages over the classes
    that occur in the targets or the predictions (as scikit-learn averages: a class in neither is left out)."""
    matrix = confusion.to("cpu").double()
    true_positive = matrix.diagonal()
    predicted = matrix.sum(0)
    actual = matrix.sum(1)
    precision = (true_positive / predicted).nan_to_num(0.0)
    recall = (true_positive / actual).nan_to_num(0.0)
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0.0)
    occurring = (predicted + actual) > 0
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
        "macro_precision": _mean(precision[occurring]),
        "macro_recall": _mean(recall[occurring]),
        "macro_f1": _mean(f1[occurring]),
    }


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """The mean of the per-class recalls over the classes present in the targets (scikit-learn's
    ``balanced_accuracy_score``): accuracy as if every class had as many images."""
    matrix = confusion.to("cpu").double()
    actual = matrix.sum(1)
    present = actual > 0
    return _mean(matrix.diagonal()[present] / actual[present])


def macro_f1(confusion: torch.Tensor) -> float:
    """The unweighted mean of the per-class F1 scores (see :func:`per_class_report`)."""
    return float(per_class_report(confusion, [str(i) for i in range(confusion.shape[0])])["macro_f1"])


def topk_k(num_classes: int) -> int:
    """The k of the top-k accuracy: 5, or the number of classes when there are fewer (then it is named top-3 for
    3 classes, in text, JSON and results.json: a "top-5" of 3 classes would always be 100%)."""
    return max(1, min(5, num_classes))


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else float("nan")
