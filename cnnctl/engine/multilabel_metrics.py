"""Multi-label metrics: pure functions of per-label scores (N×C probabilities or logits) and 0/1 targets (N×C),
each checked against scikit-learn in the tests.

- average precision per label (scikit-learn's ``average_precision_score``: the step-wise area under the
  precision-recall curve, tied scores taken together) and mAP, its mean over the labels that occur in the targets;
- precision, recall and F1 per label at per-label decision thresholds (0 where undefined, as scikit-learn's
  ``zero_division=0``), micro F1 (over every image-label decision) and macro F1 (the mean over all labels);
- subset accuracy: the share of images whose whole set of labels is right;
- the decisions: each label at or above its threshold, kept within the range of labels per image that the
  training split has (an image of data whose images all have two labels gets two);
- the decision thresholds that maximise each label's F1 on a split (the validation split in training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEFAULT_THRESHOLD = 0.5  # a label without positives in the tuning split keeps it


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Average precision of one label: Σ (Rₖ − Rₖ₋₁)·Pₖ over the distinct scores, highest first; NaN when the
    label has no positive."""
    import torch

    scores, targets = scores.detach().double().flatten().cpu(), (targets.detach().flatten().cpu() > 0.5).double()
    positives = float(targets.sum())
    if positives == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, targets = scores[order], targets[order]
    last_of_tie = torch.cat([torch.nonzero(scores[1:] != scores[:-1]).flatten(),
                             torch.tensor([scores.numel() - 1])])
    true_positives = torch.cumsum(targets, 0)[last_of_tie]
    precision = true_positives / (last_of_tie + 1).double()
    recall = true_positives / positives
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((steps * precision).sum())


def per_label_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    return [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP: the mean average precision over the labels that have at least one positive (NaN when none has)."""
    values = [value for value in per_label_average_precision(scores, targets) if value == value]
    return sum(values) / len(values) if values else float("nan")


def decisions(probabilities: torch.Tensor, thresholds: Any,
              label_count: tuple[int, int] | None = None) -> torch.Tensor:
    """Which labels each image is given (bool N×C): those whose probability reaches their label's threshold.
    ``label_count`` (fewest, most), the range of labels per image seen in training: an image given fewer labels
    also gets its most probable other labels up to the fewest, one given more keeps its most probable ones."""
    import torch

    limits = torch.as_tensor(thresholds, dtype=probabilities.dtype, device=probabilities.device).view(1, -1)
    given = probabilities >= limits
    if label_count is None or probabilities.shape[0] == 0:
        return given
    fewest, most = label_count
    wanted = given.sum(1, keepdim=True).clamp(min=fewest, max=most)
    order = torch.argsort(probabilities + 2.0 * given, dim=1, descending=True, stable=True)  # given ones first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order).contiguous())
    return rank < wanted


def label_count_range(targets: torch.Tensor) -> tuple[int, int]:
    """The fewest and the most labels an image of ``targets`` (0/1 N×C) has."""
    per_image = (targets.detach().cpu() > 0.5).sum(1)
    if per_image.numel() == 0:
        return 0, targets.shape[1]
    return int(per_image.min()), int(per_image.max())


def counts(predicted: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per label: true positives, false positives, false negatives and support (float64, C each)."""
    predicted, truth = predicted.cpu().bool(), targets.cpu() > 0.5
    return {"tp": (predicted & truth).sum(0).double(), "fp": (predicted & ~truth).sum(0).double(),
            "fn": (~predicted & truth).sum(0).double(), "support": truth.sum(0).double()}


def per_label_report(predicted: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per label (0 where undefined) and their macro averages over every
    label (scikit-learn's ``average="macro", zero_division=0``), micro precision/recall/F1 and subset accuracy."""
    n = counts(predicted, targets)
    tp, fp, fn = n["tp"], n["fp"], n["fn"]
    precision = (tp / (tp + fp)).nan_to_num(0.0)
    recall = (tp / (tp + fn)).nan_to_num(0.0)
    f1 = (2 * tp / (2 * tp + fp + fn)).nan_to_num(0.0)
    rows = [{"class": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "support": int(n["support"][i])} for i, name in enumerate(classes)]
    total_tp, total_fp, total_fn = float(tp.sum()), float(fp.sum()), float(fn.sum())
    return {
        "per_class": rows,
        "macro_precision": _mean(precision), "macro_recall": _mean(recall), "macro_f1": _mean(f1),
        "micro_precision": _ratio(total_tp, total_tp + total_fp),
        "micro_recall": _ratio(total_tp, total_tp + total_fn),
        "micro_f1": _ratio(2 * total_tp, 2 * total_tp + total_fp + total_fn),
        "subset_accuracy": subset_accuracy(predicted, targets),
    }


def micro_f1(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """F1 over every (image, label) decision together."""
    n = counts(predicted, targets)
    tp, fp, fn = float(n["tp"].sum()), float(n["fp"].sum()), float(n["fn"].sum())
    return _ratio(2 * tp, 2 * tp + fp + fn)


def macro_f1(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """The unweighted mean of the labels' F1 scores (0 for a label with no positive and no prediction)."""
    n = counts(predicted, targets)
    return _mean((2 * n["tp"] / (2 * n["tp"] + n["fp"] + n["fn"])).nan_to_num(0.0))


def subset_accuracy(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """The share of images whose predicted set of labels is exactly their true set."""
    if predicted.shape[0] == 0:
        return float("nan")
    return float((predicted.cpu().bool() == (targets.cpu() > 0.5)).all(dim=1).double().mean())


def balanced_accuracy(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean over labels of (true-positive rate + true-negative rate) / 2, over labels with both kinds."""
    predicted, truth = predicted.cpu().bool(), targets.cpu() > 0.5
    positives, negatives = truth.sum(0).double(), (~truth).sum(0).double()
    tpr = (predicted & truth).sum(0).double() / positives
    tnr = (~predicted & ~truth).sum(0).double() / negatives
    both = (positives > 0) & (negatives > 0)
    return _mean(((tpr + tnr) / 2)[both])


def tune_thresholds(probabilities: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, the decision threshold that maximises its F1 on these images: the midpoint between the lowest
    probability given the label and the next lower one (so the same images are decided the same way, with a
    margin either side). A label without positives keeps :data:`DEFAULT_THRESHOLD`."""
    import torch

    probabilities = probabilities.detach().double().cpu()
    truth = (targets.detach().cpu() > 0.5).double()
    thresholds = []
    for c in range(probabilities.shape[1]):
        positives = float(truth[:, c].sum())
        if positives == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = torch.argsort(probabilities[:, c], descending=True, stable=True)
        scores, hits = probabilities[order, c], truth[order, c]
        ends = torch.cat([torch.nonzero(scores[1:] != scores[:-1]).flatten(), torch.tensor([scores.numel() - 1])])
        true_positives = torch.cumsum(hits, 0)[ends]
        f1 = 2 * true_positives / ((ends + 1).double() + positives)  # 2TP / (2TP + FP + FN)
        best = int(torch.argmax(f1))  # the first (highest threshold) of equal scores
        position = int(ends[best])
        below = float(scores[position + 1]) if position + 1 < scores.numel() else 0.0
        thresholds.append(min(1.0, max(0.0, (float(scores[position]) + below) / 2)))
    return thresholds


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """``--class-weights auto`` for multi-label data: each label's negatives / positives in the training split
    (the ``pos_weight`` of binary cross-entropy), 1 for a label that is always or never given."""
    import torch

    truth = targets.detach().cpu() > 0.5
    positives, negatives = truth.sum(0).double(), (~truth).sum(0).double()
    weights = torch.where((positives > 0) & (negatives > 0), negatives / positives.clamp_min(1),
                          torch.ones_like(positives))
    return weights.float()


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else float("nan")
