"""Multi-label classification (``--task multilabel``): several labels per image, one sigmoid per label.

Training minimises binary cross-entropy per label (``--class-weights auto``: each label's positives weighted by
its negatives / positives in the training split). After every validation each label's decision threshold is
chosen to maximise its F1 on the validation split (:func:`~cnnctl.engine.multilabel_metrics.tune_thresholds`);
the checkpoint keeps them in its metadata with the range of labels per image in the training split, and
``predict`` gives every label whose probability reaches its threshold, within that range (``--thresholds`` and
``--label-count`` override them). The task is chosen automatically when an image of the training data
has several labels, and said in one line.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnctl.data.mixing import hard_labels
from cnnctl.data.targets import MULTILABEL, SINGLE, as_multi_hot, is_multi_hot, labels_per_image
from cnnctl.engine import multilabel_metrics as metrics
from cnnctl.engine.tta import tta_probabilities
from cnnctl.errors import UsageError
from cnnctl.recipe.config import check_multilabel_options  # noqa: F401 - part of this module's API
from cnnctl.recipe.options import label

if TYPE_CHECKING:
    import torch


# --------------------------------------------------------------------------------------------- the task
def resolve_task(requested: str | None, data: Any, log: Callable[[str], None]) -> str:
    """``single`` or ``multilabel`` for ``--task`` (auto: multilabel when an image has several labels); for a
    multi-label task every split's labels become 0/1 rows (single-label data: one 1 per row)."""
    requested = requested or "auto"
    multi = is_multi_hot(data.train.labels)
    if requested == SINGLE and multi:
        most = int(labels_per_image(data.train.labels).max())
        raise UsageError(f"{label('task')} single, but images of this data have up to {most} labels each",
                         hint=f"use {label('task')} multilabel (or leave {label('task')} out)")
    if requested == SINGLE or (requested == "auto" and not multi):
        return SINGLE
    classes = len(data.classes)
    for split in (data.train, data.val, data.test):
        if split is not None:
            split.labels = as_multi_hot(split.labels, classes)
    if requested == "auto":
        several = int((labels_per_image(data.train.labels) > 1).sum())
        log(f"multi-label task: {several:,} of {len(data.train):,} training images have several labels, so "
            f"each of the {classes} labels gets a sigmoid and binary cross-entropy (--task single refuses this "
            "data)")
    fewest, most = metrics.label_count_range(data.train.labels)
    log(f"multi-label decisions keep to {describe_label_count((fewest, most))} per image, as the training images "
        "have (eval/predict --label-count any lifts this)")
    return MULTILABEL


def training_label_count(data: Any, task: str) -> tuple[int, int] | None:
    """(fewest, most) labels per image in the training split: the range a multi-label model's decisions keep
    to, so that data whose images all have two labels is answered with two (None for a single-label task)."""
    return metrics.label_count_range(data.train.labels) if task == MULTILABEL else None


def describe_label_count(label_count: tuple[int, int] | None) -> str:
    if label_count is None:
        return "any number of labels"
    fewest, most = label_count
    return f"{fewest} label{'s' if fewest != 1 else ''}" if fewest == most else f"{fewest} to {most} labels"


def task_settings(config: Any, task: str) -> str:
    """``task``, once the options fit it: a multi-label run refuses what has no meaning for several labels per
    image; ``--monitor val_map`` needs one."""
    if task == MULTILABEL:
        check_multilabel_options(config)
    elif config.monitor == "val_map":
        raise UsageError(f"{label('monitor')} val_map (mean average precision) applies to multi-label data",
                         hint=f"use {label('task')} multilabel, or {label('monitor')} val_acc")
    return task


def initialise_output_bias(model: torch.nn.Module, targets: torch.Tensor) -> bool:
    """Start each label's output at its frequency in the training split (bias = log(p / (1 - p)) on the last
    linear layer), so the first steps learn the images rather than how rare each label is (Lin et al. 2017's
    prior initialisation). Returns whether an output layer was found."""
    import torch

    layers = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    if not layers or layers[-1].bias is None or layers[-1].out_features != targets.shape[1]:
        return False
    share = (targets > 0.5).double().mean(0).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        layers[-1].bias.copy_(torch.log(share / (1 - share)).to(layers[-1].bias.dtype))
    return True


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None,
                    smoothing: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy per label, averaged; ``smoothing`` moves the targets towards 1/2; ``weights``: each
    image's weight (a label file's ``weight`` column), a weighted mean over the images."""
    import torch.nn.functional as F

    targets = targets.to(logits.dtype)
    if smoothing:
        targets = targets * (1 - smoothing) + 0.5 * smoothing
    if weights is None:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    per_image = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none").mean(1)
    return (per_image * weights).sum() / weights.sum().clamp_min(1e-12)


def correct_count(logits: torch.Tensor, labels: torch.Tensor, task: str,
                  label_count: tuple[int, int] | None = None) -> torch.Tensor:
    """Training accuracy's numerator: images whose class (single) or whole set of labels (at 0.5, within
    ``label_count``) is right."""
    if task == MULTILABEL:
        given = metrics.decisions(logits.sigmoid(), [metrics.DEFAULT_THRESHOLD] * logits.shape[1], label_count)
        return (given == (labels > 0.5)).all(dim=1).sum()
    return (logits.argmax(1) == hard_labels(labels)).sum()


# --------------------------------------------------------------------------------------------- evaluation
@dataclass
class MultiLabelResult:
    """A multi-label evaluation: loss (mean binary cross-entropy per label), mAP, the decisions at
    ``thresholds`` and, for the report, every image's probabilities and targets."""

    loss: float
    count: int
    thresholds: list[float]
    probabilities: Any  # float32 N×C
    targets: Any  # float32 N×C (0/1)
    average_precision: list[float] = field(default_factory=list)
    label_count: tuple[int, int] | None = None  # (fewest, most) labels an image is given; None: any number

    @property
    def map(self) -> float:
        values = [value for value in self.average_precision if not math.isnan(value)]
        return sum(values) / len(values) if values else float("nan")

    @functools.cached_property
    def predicted(self) -> torch.Tensor:
        """The decisions, made once: every metric below and the report read them."""
        return metrics.decisions(self.probabilities, self.thresholds, self.label_count)

    @property
    def subset_accuracy(self) -> float:
        return metrics.subset_accuracy(self.predicted, self.targets)

    @property
    def macro_f1(self) -> float:
        return metrics.macro_f1(self.predicted, self.targets)

    @property
    def micro_f1(self) -> float:
        return metrics.micro_f1(self.predicted, self.targets)

    @property
    def balanced_accuracy(self) -> float:
        return metrics.balanced_accuracy(self.predicted, self.targets)

    def as_dict(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """The numbers ``eval --json`` prints (``accuracy`` is the subset accuracy)."""
        result: dict[str, Any] = {"task": MULTILABEL, "loss": self.loss, "accuracy": self.subset_accuracy,
                                  "subset_accuracy": self.subset_accuracy, "map": self.map,
                                  "micro_f1": self.micro_f1, "macro_f1": self.macro_f1,
                                  "balanced_accuracy": self.balanced_accuracy, "count": self.count,
                                  "thresholds": list(self.thresholds),
                                  "label_count": list(self.label_count) if self.label_count else None}
        if classes is not None:
            report = metrics.per_label_report(self.predicted, self.targets, list(classes))
            for row, ap, threshold in zip(report["per_class"], self.average_precision, self.thresholds):
                row.update(average_precision=None if math.isnan(ap) else ap, threshold=threshold)
            result.update(report)
            truth = self.targets > 0.5
            result["labels_per_image"] = {"true": float(truth.sum(1).double().mean()) if self.count else 0.0,
                                          "predicted": float(self.predicted.sum(1).double().mean())
                                          if self.count else 0.0}
        return result


def evaluate_multilabel(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        num_classes: int, *, thresholds: Sequence[float] | None = None, tune: bool = False,
                        label_count: tuple[int, int] | None = None,
                        max_batches: int | None = None, autocast: Any = None, tta: str = "none",
                        on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> MultiLabelResult:
    """Run ``model`` over ``batches`` (labels: 0/1 rows, or class indices) and score the sigmoid outputs at
    ``thresholds`` (0.5 each when None) within ``label_count`` (fewest, most labels per image); ``tune``: choose
    each label's threshold for its best F1 here first."""
    import contextlib

    import torch

    was_training = model.training
    model.eval()
    probabilities, targets, loss_sum, count = [], [], 0.0, 0
    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        for index, (inputs, labels) in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            labels = as_multi_hot(labels, num_classes).to(inputs.device)
            if tta == "none":
                logits = model(inputs).float()
                batch_loss = multilabel_loss(logits, labels) * labels.numel()
                batch_probabilities = logits.sigmoid()
            else:
                batch_probabilities = tta_probabilities(model, inputs, tta, multilabel=True)
                batch_loss = torch.nn.functional.binary_cross_entropy(
                    batch_probabilities.clamp(1e-7, 1 - 1e-7), labels, reduction="sum")
            if on_batch is not None:
                on_batch(batch_probabilities, labels)
            loss_sum += float(batch_loss)
            count += int(labels.shape[0])
            probabilities.append(batch_probabilities.cpu())
            targets.append(labels.cpu())
    model.train(was_training)
    scores = torch.cat(probabilities) if probabilities else torch.zeros(0, num_classes)
    truth = torch.cat(targets) if targets else torch.zeros(0, num_classes)
    if tune:
        thresholds = metrics.tune_thresholds(scores, truth)
    chosen = [metrics.DEFAULT_THRESHOLD] * num_classes if thresholds is None else [float(t) for t in thresholds]
    return MultiLabelResult(loss=loss_sum / (count * num_classes) if count else float("nan"), count=count,
                            thresholds=chosen, probabilities=scores, targets=truth,
                            average_precision=metrics.per_label_average_precision(scores, truth),
                            label_count=label_count)


def metric_row(result: MultiLabelResult, prefix: str) -> dict[str, float]:
    """The numbers an epoch's row (``val_``) or results.json (``test_``) keeps: ``_acc`` is the subset accuracy
    at the thresholds, ``_map`` the mean average precision."""
    return {f"{prefix}_loss": result.loss, f"{prefix}_acc": result.subset_accuracy, f"{prefix}_map": result.map,
            f"{prefix}_macro_f1": result.macro_f1, f"{prefix}_micro_f1": result.micro_f1,
            f"{prefix}_balanced_acc": result.balanced_accuracy}


# --------------------------------------------------------------------------------------------- thresholds
def parse_thresholds(value: str | Sequence[float] | None, classes: Sequence[str], *, task: str | None,
                     option: str = "--thresholds") -> list[float] | None:
    """``--thresholds``: one number for every label, or one per label (comma-separated, in the order of the
    classes), each from 0 to 1; only for a multi-label checkpoint."""
    if value is None:
        return None
    if task != MULTILABEL:
        raise UsageError(f"{option} applies to multi-label checkpoints; this one is single-label (it gives one "
                         "class per image)")
    if isinstance(value, str):
        parts: list[Any] = [part.strip() for part in value.split(",")]
    else:
        parts = [value] if isinstance(value, (int, float)) else list(value)
    numbers = []
    for part in parts:
        try:
            number = float(part)
        except (TypeError, ValueError):
            raise UsageError(f"{option} takes numbers from 0 to 1, got {part!r}") from None
        if not (math.isfinite(number) and 0 <= number <= 1):
            raise UsageError(f"{option} takes numbers from 0 to 1, got {part}")
        numbers.append(number)
    if len(numbers) == 1:
        return numbers * len(classes)
    if len(numbers) != len(classes):
        raise UsageError(f"{option} has {len(numbers)} values but the checkpoint has {len(classes)} labels",
                         hint="give one value for every label, or one per label in the order of the classes")
    return numbers


STORED = "stored"  # --label-count left out: the range the checkpoint keeps


def parse_label_count(value: str | int | None, meta: Any, option: str = "--label-count"
                      ) -> tuple[int, int] | None | str:
    """``--label-count``: ``any`` (no limit), ``N`` or ``MIN-MAX`` labels per image; :data:`STORED` when left out.
    Only for a multi-label checkpoint."""
    if value is None:
        return STORED
    if not getattr(meta, "multilabel", False):
        raise UsageError(f"{option} applies to multi-label checkpoints; this one is single-label (it gives one "
                         "class per image)")
    text = str(value).strip().lower()
    if text == "any":
        return None
    low, dash, high = text.partition("-")
    try:
        fewest, most = int(low), int(high if dash else low)
    except ValueError:
        raise UsageError(f"{option} takes any, N or MIN-MAX labels per image, got {value!r}") from None
    if not 0 <= fewest <= most <= meta.num_classes:
        raise UsageError(f"{option} {value} is outside 0 <= MIN <= MAX <= {meta.num_classes} (the checkpoint's "
                         "labels)", hint=f"e.g. {option} 1-3, or any")
    return fewest, most
