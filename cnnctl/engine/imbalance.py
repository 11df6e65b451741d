"""Imbalanced classes: per-class loss weights (``--class-weights auto|FILE``) and the per-image sampling weights of
``--sampler balanced``.

``auto`` is inverse frequency normalised as scikit-learn's ``class_weight="balanced"``: ``w_c = N / (C · n_c)``,
so a balanced training set gets weight 1 everywhere and the loss keeps its scale. A FILE gives values per class
name: JSON (``{"cat": 1.0, "dog": 4.0}``) or text lines ``name,weight`` / ``name weight``; a class it does not
name keeps weight 1. The validation loss is always the plain, unweighted cross-entropy, so it stays comparable
between runs with and without weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cnnctl.data.targets import images_per_class
from cnnctl.engine.multilabel_metrics import positive_weights
from cnnctl.recipe.class_weights import check_class_names

if TYPE_CHECKING:
    import torch

    from cnnctl.data.splits import PreparedData

def resolve_class_weights(value: str | None, classes: Sequence[str], labels: torch.Tensor) -> torch.Tensor | None:
    """The loss weight of each class (float32, in ``classes`` order), or None for plain cross-entropy."""
    import torch

    if value is None:
        return None
    if value == "auto":
        counts = images_per_class(labels, len(classes)).double()
        present = counts > 0
        weights = torch.zeros(len(classes), dtype=torch.float64)
        weights[present] = counts.sum() / (int(present.sum()) * counts[present])
        return weights.float()
    given = check_class_names(value, classes)
    return torch.tensor([given.get(name, 1.0) for name in classes], dtype=torch.float32)


def describe_weights(weights: torch.Tensor, classes: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(f"{name} {float(w):.3g}" for name, w in list(zip(classes, weights))[:limit])
    return shown + (" …" if len(classes) > limit else "")


def balanced_sample_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image sampling weight 1 / (images of its class): every class is drawn equally often."""
    counts = images_per_class(labels, num_classes).double().clamp_min(1)
    return (1.0 / counts)[labels.to("cpu").long()]


def loss_weights(value: str | None, data: PreparedData, device: torch.device,
                 log: Callable[[str], None]) -> torch.Tensor | None:
    """``--class-weights`` resolved against the training split, on ``device``, said in one line. For multi-label
    data (0/1 rows) they weight each label's positives: auto is its negatives / positives."""
    if value is not None and data.train.labels.dim() == 2:
        import torch

        if value == "auto":
            weights = positive_weights(data.train.labels)
        else:
            given = check_class_names(value, data.classes)
            weights = torch.tensor([given.get(name, 1.0) for name in data.classes], dtype=torch.float32)
        log(f"positive weights ({'negatives / positives' if value == 'auto' else value}): "
            f"{describe_weights(weights, data.classes)}")
        return weights.to(device)
    weights = resolve_class_weights(value, data.classes, data.train.labels)
    if weights is None:
        return None
    log(f"class weights ({'inverse frequency' if value == 'auto' else value}): "
        f"{describe_weights(weights, data.classes)}")
    return weights.to(device)


def sampler_weights(sampler: str | None, data: PreparedData) -> torch.Tensor | None:
    """Per-image sampling weights for ``--sampler balanced``; None for the plain shuffle."""
    if sampler in (None, "shuffle"):
        return None
    return balanced_sample_weights(data.train.labels, len(data.classes))
