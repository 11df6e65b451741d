"""Batch augmentations as tensor ops on uint8 N×C×H×W images (random generator passed in for reproducibility)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch

Augmentation = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]


def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per image."""
    import torch
    import torch.nn.functional as F

    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator).to(images.device)
    rows = (offsets[0].view(batch, 1) + torch.arange(height, device=images.device)).view(batch, 1, height, 1)
    cols = (offsets[1].view(batch, 1) + torch.arange(width, device=images.device)).view(batch, 1, 1, width)
    batch_index = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    channel_index = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[batch_index, channel_index, rows, cols]


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    import torch

    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(3), images)


def make_augmentation(preset: str, image_size: tuple[int, int]) -> Augmentation | None:
    """Return the batch augmentation for a preset name: ``none``, ``shift`` (crop with padding, digits),
    ``crop-flip`` (crop with padding and horizontal flip, natural images)."""
    padding = max(2, round(min(image_size) / 8))
    if preset == "none":
        return None
    if preset == "shift":
        return lambda images, generator: random_crop(images, generator, padding)
    if preset == "crop-flip":
        return lambda images, generator: random_hflip(random_crop(images, generator, padding), generator)
    raise UsageError(f"unknown augmentation {preset!r}; choose one of: {', '.join(AUGMENT_PRESETS)}")


AUGMENT_PRESETS = ("none", "shift", "crop-flip")
