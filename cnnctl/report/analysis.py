"""The numbers behind "why is the model wrong": per-image losses, calibration, the most confused class pairs and
suspected label errors. Pure functions of the evaluation's logits and labels, so each one can be checked
against an independent computation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch

CALIBRATION_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 ("On calibration of modern networks")
LABELS_MISSING = "suspected label errors need cleanlab: pip install 'cnnctl[labels]'"


class CalibrationBins:
    """Streaming reliability statistics: per confidence bin, the count, the summed confidence and the number of
    correct top-1 predictions. Sums stay on the device until :meth:`result`."""

    def __init__(self, bins: int = CALIBRATION_BINS):
        self.bins = bins
        self.count: Any = None
        self.confidence: Any = None
        self.correct: Any = None

    def add(self, probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        import torch

        confidence, predicted = probabilities.max(dim=1)
        # bin i holds confidences in (i/B, (i+1)/B]; a confidence of exactly 0 cannot occur after a softmax
        index = (confidence * self.bins).ceil().long().clamp(1, self.bins) - 1
        count = torch.bincount(index, minlength=self.bins)
        summed = torch.zeros(self.bins, dtype=torch.float64, device=confidence.device)
        summed.index_add_(0, index, confidence.double())
        correct = torch.bincount(index, weights=(predicted == labels).double(), minlength=self.bins)
        if self.count is None:
            self.count, self.confidence, self.correct = count, summed, correct
        else:
            self.count += count
            self.confidence += summed
            self.correct += correct

    def result(self) -> dict[str, Any]:
        """``ece`` (the count-weighted mean |accuracy - confidence| over the bins), ``mce`` (the largest gap)
        and the bins themselves."""
        rows = []
        if self.count is None:
            return {"ece": float("nan"), "mce": float("nan"), "num_bins": self.bins, "bins": rows}
        count, confidence, correct = self.count.cpu().tolist(), self.confidence.cpu().tolist(), \
            self.correct.cpu().tolist()
        total = sum(count)
        ece = 0.0
        mce = 0.0
        for i in range(self.bins):
            row: dict[str, Any] = {"lower": i / self.bins, "upper": (i + 1) / self.bins, "count": int(count[i]),
                                   "confidence": None, "accuracy": None}
            if count[i]:
                mean_confidence = confidence[i] / count[i]
                accuracy = correct[i] / count[i]
                row.update(confidence=mean_confidence, accuracy=accuracy)
                gap = abs(accuracy - mean_confidence)
                ece += count[i] / total * gap
                mce = max(mce, gap)
            rows.append(row)
        return {"ece": ece, "mce": mce, "num_bins": self.bins, "bins": rows}


class ScaledCalibration:
    """``evaluate(on_batch=...)`` of a calibrated checkpoint: reliability bins and loss of ``logits / T``."""

    def __init__(self, temperature: float, bins: int = CALIBRATION_BINS):
        self.temperature = temperature
        self.bins = CalibrationBins(bins)
        self.loss_sum = 0.0
        self.count = 0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        import torch.nn.functional as F

        scaled = logits.float() / self.temperature
        self.bins.add(scaled.softmax(dim=1), labels)
        self.loss_sum += float(F.cross_entropy(scaled, labels, reduction="sum"))
        self.count += int(labels.shape[0])

    def result(self, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        """``temperature``, ``loss`` and ``ece``/``mce``/``bins`` after scaling, with the stored ``threshold``."""
        stored = stored or {}
        return {"temperature": self.temperature, "threshold": stored.get("threshold"),
                "loss": self.loss_sum / self.count if self.count else float("nan"), **self.bins.result()}


@dataclass
class OutputCollector:
    """``evaluate(on_batch=...)``: calibration bins always; every image's logits too when ``keep`` (the report
    and label errors need them; plain ``eval`` does not pay for the memory)."""

    keep: bool = False
    calibration: CalibrationBins = field(default_factory=CalibrationBins)
    logits: list[Any] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.calibration.add(logits.softmax(dim=1), labels)
        if self.keep:
            self.logits.append(logits.cpu())
            self.labels.append(labels.cpu())

    def outputs(self) -> SampleOutputs:
        import torch

        if not self.logits:
            raise ValueError("no logits were kept")
        return SampleOutputs.from_logits(torch.cat(self.logits), torch.cat(self.labels))


@dataclass
class SampleOutputs:
    """Per image of the evaluated split, in its order: probabilities (N×classes), given labels, losses."""

    probabilities: Any
    labels: Any
    losses: Any

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor) -> SampleOutputs:
        import torch.nn.functional as F

        logits = logits.float()
        return cls(logits.softmax(dim=1), labels, F.cross_entropy(logits, labels, reduction="none"))

    @property
    def predicted(self) -> Any:
        return self.probabilities.argmax(dim=1)


def top_losses(outputs: SampleOutputs, count: int) -> list[int]:
    """Indices of the ``count`` images with the highest cross-entropy loss, highest first (ties: lower index)."""
    import torch

    order = torch.sort(outputs.losses, descending=True, stable=True).indices
    return order[:count].tolist()


def confused_pairs(confusion: Any, outputs: SampleOutputs, *, pairs: int = 8, examples: int = 6
                   ) -> list[dict[str, Any]]:
    """The off-diagonal confusion cells with the most images, each with its most confidently wrong examples."""
    import torch

    matrix = torch.as_tensor(confusion).clone()
    matrix.fill_diagonal_(0)
    flat = matrix.flatten()
    order = torch.sort(flat, descending=True, stable=True).indices
    predicted = outputs.predicted
    chosen = []
    for cell in order[:pairs].tolist():
        count = int(flat[cell])
        if count == 0:
            break
        true, wrong = divmod(cell, matrix.shape[1])
        members = ((outputs.labels == true) & (predicted == wrong)).nonzero().flatten()
        confidence = outputs.probabilities[members, wrong]
        ranked = members[torch.sort(confidence, descending=True, stable=True).indices]
        chosen.append({"true": true, "predicted": wrong, "count": count, "examples": ranked[:examples].tolist()})
    return chosen


def require_cleanlab() -> None:
    try:
        import cleanlab  # noqa: F401
    except ImportError as error:
        raise UsageError(LABELS_MISSING) from error


def label_issues(outputs: SampleOutputs) -> list[tuple[int, float]]:
    """Images whose given label the model finds unlikely, by confident learning (cleanlab's
    ``find_label_issues``, pruning by noise rate), ranked by their label quality (the probability of the given
    label, lowest first): ``[(index, quality), ...]``. Meaningful when the model did not train on these images."""
    require_cleanlab()
    import warnings

    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = outputs.labels.numpy().astype(np.int64)
    probabilities = outputs.probabilities.double().numpy()
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # cleanlab checks rows sum to 1
    with warnings.catch_warnings():  # cleanlab warns about classes with few images; the ranking still stands
        warnings.simplefilter("ignore")
        ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
        quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    return [(int(i), float(quality[i])) for i in ranked]
