"""What a split's ``labels`` hold: class indices (int64 N, one class per image) or, for multi-label data, a 0/1
row per image (N×classes, any number of labels per image)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SINGLE = "single"
MULTILABEL = "multilabel"
TASKS = ("auto", SINGLE, MULTILABEL)


def is_multi_hot(labels: torch.Tensor) -> bool:
    """Whether ``labels`` are 0/1 rows (multi-label) rather than class indices."""
    return labels.dim() == 2


def multi_hot(label_sets: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """float32 N×classes with a 1 at each of an image's labels."""
    import torch

    rows = torch.zeros(len(label_sets), num_classes, dtype=torch.float32)
    for row, labels in enumerate(label_sets):
        if len(labels):
            rows[row, list(labels)] = 1.0
    return rows


def as_multi_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices as one-hot rows; 0/1 rows as float32."""
    import torch

    if is_multi_hot(labels):
        return labels.to(torch.float32)
    return torch.nn.functional.one_hot(labels.to(torch.int64), num_classes).to(torch.float32)


def images_per_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many images have each class (int64 classes), for class indices and 0/1 rows alike."""
    import torch

    if is_multi_hot(labels):
        return (labels > 0.5).sum(0).to(torch.int64)
    return torch.bincount(labels.to("cpu", torch.int64), minlength=num_classes)


def labels_per_image(labels: torch.Tensor) -> torch.Tensor:
    """How many labels each image has (int64 N)."""
    import torch

    if not is_multi_hot(labels):
        return torch.ones(labels.shape[0], dtype=torch.int64)
    return (labels > 0.5).sum(1)
