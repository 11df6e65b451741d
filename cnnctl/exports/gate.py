"""The accuracy gate: an export, run in its own runtime, against the PyTorch model on the same images.

What is measured: the accuracy of both (on a labelled split; a multi-label checkpoint's is its subset accuracy,
by the decisions it makes), how often the export's top-1 class is PyTorch's
(top-1 agreement), how often its k most likely classes are PyTorch's k, in any order (top-k agreement, k = 5 or
the number of classes when fewer), the largest difference of a class probability (softmax; a multi-label
checkpoint's sigmoids) and of a logit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cnnctl.engine.metrics import topk_k
from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch

MAX_DROP = 1.0  # accuracy points an export may lose before it is refused


@dataclass
class Comparison:
    count: int
    on: str  # the images, in words
    k: int
    top1_agreement: float
    topk_agreement: float
    max_prob_diff: float
    max_abs_diff: float  # of the logits
    accuracy: float | None = None  # the export's, on a labelled split
    reference_accuracy: float | None = None  # PyTorch's, on the same images

    @property
    def drop(self) -> float | None:
        """Accuracy points lost (negative: gained); None without labels."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return 100 * (self.reference_accuracy - self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop_points": self.drop}


def check_max_drop(max_drop: float) -> float:
    """``--max-drop``: accuracy points, 0 to 100."""
    if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and 0 <= max_drop <= 100):
        raise UsageError(f"--max-drop must be between 0 and 100 (accuracy points), not {max_drop}")
    return float(max_drop)


def compare(model: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
            batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], *, num_classes: int, on: str,
            batch: int | None = None,
            on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
            right: Callable[[torch.Tensor, torch.Tensor], int] | None = None,
            multilabel: bool = False) -> Comparison:
    """Run ``model`` (PyTorch) and ``run`` (the export) on every batch; ``batch``: the export's fixed batch size
    (1), None for any. Labels of None: agreement only. ``on_batch(expected, actual)`` sees both logits;
    ``right(logits, labels)``: how many images of a batch are right (default: the top-1 class is the label);
    ``multilabel``: probabilities are each class's sigmoid, not the softmax."""
    import torch

    right = right or (lambda logits, labels: int((logits.argmax(1) == labels).sum()))
    k = topk_k(num_classes)
    count = agree1 = agreek = correct = reference_correct = 0
    labelled = True
    max_prob = max_logit = 0.0
    model.eval()
    for inputs, labels in batches:
        with torch.inference_mode():
            expected = model(inputs).float()
        pieces = inputs.split(batch) if batch else (inputs,)
        actual = torch.cat([run(piece) for piece in pieces])
        if actual.shape != expected.shape:
            raise ShapeMismatch(tuple(actual.shape), tuple(expected.shape))
        if on_batch is not None:
            on_batch(expected, actual)
        max_logit = _worst(max_logit, (actual - expected).abs().max())
        probability = torch.sigmoid if multilabel else (lambda logits: logits.softmax(1))
        max_prob = _worst(max_prob, (probability(actual) - probability(expected)).abs().max())
        top_actual, top_expected = actual.topk(k, dim=1).indices, expected.topk(k, dim=1).indices
        agree1 += int((top_actual[:, 0] == top_expected[:, 0]).sum())
        agreek += int((top_actual.sort(1).values == top_expected.sort(1).values).all(1).sum())
        if labels is None:
            labelled = False
        else:
            correct += right(actual, labels)
            reference_correct += right(expected, labels)
        count += int(inputs.shape[0])
    share = (lambda hits: hits / count) if count else (lambda hits: float("nan"))
    return Comparison(count, on, k, share(agree1), share(agreek), max_prob, max_logit,
                      share(correct) if labelled else None, share(reference_correct) if labelled else None)


def _worst(current: float, value: torch.Tensor) -> float:
    value = float(value)
    return math.nan if math.isnan(value) or math.isnan(current) else max(current, value)


class ShapeMismatch(Exception):
    def __init__(self, actual: tuple[int, ...], expected: tuple[int, ...]):
        self.actual, self.expected = actual, expected
        super().__init__(f"the exported model returned shape {actual} instead of {expected}")
