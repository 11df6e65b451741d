"""Calibration and abstention: temperature scaling fitted on the validation split, the expected calibration error,
and a confidence threshold below which an image is answered "unknown".

Temperature scaling (Guo et al. 2017, "On calibration of modern networks") divides every logit by one scalar T,
fitted by LBFGS to minimise the negative log-likelihood of the checkpoint's validation images. It changes no
prediction (the arg-max is the same), only how confident the probabilities are. The threshold is chosen on the same
images for a target error: the lowest confidence P such that, among the validation images whose top probability
(after T) is at least P, the share misclassified is at most the target. Both are stored in the checkpoint's
metadata (:class:`cnnctl.checkpoint.CheckpointMeta` ``calibration``) by :mod:`cnnctl.engine.calibrate`;
``cnnctl predict``, ``eval`` and the exports read them here.

:func:`expected_calibration_error`, :func:`fit_temperature` and :func:`choose_threshold` are pure functions of
logits or probabilities and labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint.schema import MAX_TEMPERATURE
from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017
MIN_CALIBRATION_IMAGES = 20  # fewer validation images fit a temperature to noise
MIN_TEMPERATURE = 0.01
UNKNOWN = "unknown"  # the class name predict answers for an image it abstains on


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean over ``bins`` equal-width confidence bins of |accuracy - mean confidence|,
    where confidence is the top probability of each row of ``probabilities`` (N×classes) and a bin holds the
    confidences in (i/bins, (i+1)/bins]. NaN for no images."""
    import torch

    if probabilities.shape[0] == 0:
        return float("nan")
    confidence, predicted = probabilities.double().max(dim=1)
    correct = (predicted == labels.to(predicted.device)).double()
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins).double()
    summed_confidence = torch.zeros(bins, dtype=torch.float64).index_add_(0, index.cpu(), confidence.cpu())
    summed_correct = torch.zeros(bins, dtype=torch.float64).index_add_(0, index.cpu(), correct.cpu())
    count = count.cpu()
    gaps = (summed_correct - summed_confidence).abs()  # = count × |accuracy - confidence| per bin
    return float(gaps.sum() / count.sum())


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    import torch.nn.functional as F

    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the mean cross-entropy of ``logits / T`` (LBFGS on log T, from T = 1), clamped to
    [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    import torch
    import torch.nn.functional as F

    logits = logits.detach().double().cpu()
    labels = labels.detach().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if temperature != temperature:  # NaN: keep the logits as they are
        return 1.0
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


@dataclass
class Threshold:
    """A confidence threshold and what it does on the images it was chosen on."""

    threshold: float
    accepted: float  # share of the images whose top probability is >= threshold
    accepted_error: float  # share of the accepted images that are misclassified


def threshold_curve(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any, Any]:
    """For every distinct confidence c (highest first): accepting the images with top probability >= c, the
    number accepted and the number of them misclassified. Returns (thresholds, accepted counts, errors)."""
    import torch

    confidence, predicted = probabilities.double().max(dim=1)
    wrong = (predicted != labels.to(predicted.device)).long()
    order = torch.sort(confidence, descending=True, stable=True).indices
    confidence, wrong = confidence[order].cpu(), wrong[order].cpu()
    errors = wrong.cumsum(0)
    accepted = torch.arange(1, confidence.shape[0] + 1)
    # a threshold accepts every image tied with it: only the last image of each run of equal confidences counts
    last = torch.ones_like(confidence, dtype=torch.bool)
    last[:-1] = confidence[:-1] != confidence[1:]
    return confidence[last], accepted[last], errors[last]


def choose_threshold(probabilities: torch.Tensor, labels: torch.Tensor, target_error: float) -> Threshold:
    """The lowest threshold P whose accepted images (top probability >= P) have an error rate <= ``target_error``.
    P = 0 when every image may be accepted; raises when even the single most confident group misses the target."""
    total = int(labels.shape[0])
    thresholds, accepted, errors = threshold_curve(probabilities, labels)
    rates = errors.double() / accepted.double()
    if float(rates[-1]) <= target_error:
        return Threshold(0.0, 1.0, float(rates[-1]))
    meeting = (rates <= target_error).nonzero().flatten()
    if meeting.numel() == 0:
        best = int(rates.argmin())
        raise UsageError(f"no threshold reaches an error of {target_error:g} on the {total:,} validation images "
                         f"(the lowest is {float(rates[best]):.4f}, accepting {int(accepted[best]):,} images at "
                         f"{float(thresholds[best]):.4f})", hint="ask for a larger --target-error")
    chosen = int(meeting[-1])  # the last index meeting the target is the lowest threshold
    return Threshold(float(thresholds[chosen]), int(accepted[chosen]) / total, float(rates[chosen]))


def accepted_share(probabilities: torch.Tensor, threshold: float) -> float:
    """The share of rows whose top probability is >= ``threshold``."""
    if probabilities.shape[0] == 0:
        return float("nan")
    return float((probabilities.max(dim=1).values >= threshold).double().mean())


# ---------------------------------------------------------------------------------------------- a checkpoint
def check_calibration_split(labels: torch.Tensor, num_classes: int, where: str = "validation split") -> None:
    """Refuse a split too small (or of one class) to fit a temperature on, in one line."""
    count = int(labels.shape[0])
    if count < MIN_CALIBRATION_IMAGES:
        raise UsageError(f"the {where} holds {count} image{'s' if count != 1 else ''}; calibration needs at least "
                         f"{MIN_CALIBRATION_IMAGES}", hint="train with a larger --val-split")
    present = int(labels.unique().numel())
    if present < 2:
        raise UsageError(f"the {where} holds images of one class only ({count} images of {num_classes} classes); "
                         "calibration needs at least two", hint="train with a larger --val-split")


def check_target_error(target_error: float | None) -> None:
    if target_error is not None and not 0 < target_error < 1:
        raise UsageError(f"--target-error must be in (0, 1), got {target_error:g}")


def calibration_record(logits: torch.Tensor, labels: torch.Tensor, target_error: float | None) -> dict[str, Any]:
    """Temperature, ECE/NLL before and after, and (with ``target_error``) the threshold and what it does."""
    temperature = fit_temperature(logits, labels)
    before = logits.double().softmax(dim=1)
    after = (logits.double() / temperature).softmax(dim=1)
    record: dict[str, Any] = {
        "temperature": temperature, "split": "val", "images": int(labels.shape[0]),
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
        "accuracy": float((after.argmax(1) == labels).double().mean()),
        "threshold": None, "target_error": None,
    }
    if target_error is not None:
        chosen = choose_threshold(after, labels, target_error)
        record.update(threshold=chosen.threshold, target_error=target_error, accepted=chosen.accepted,
                      accepted_error=chosen.accepted_error)
    return record


def stored_temperature(meta: Any) -> float:
    """The temperature a checkpoint's metadata holds (1 when it was never calibrated)."""
    calibration = getattr(meta, "calibration", None) or {}
    return float(calibration.get("temperature") or 1.0)


def stored_threshold(meta: Any) -> float | None:
    calibration = getattr(meta, "calibration", None) or {}
    threshold = calibration.get("threshold")
    return None if threshold is None else float(threshold)
