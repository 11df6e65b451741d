"""Batch augmentations as tensor ops on uint8 N×C×H×W images (random generator passed in for reproducibility)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


def random_affine(images: torch.Tensor, generator: torch.Generator, *, degrees: float = 10.0,
                  scale: tuple[float, float] = (0.9, 1.1), shift: float = 0.1) -> torch.Tensor:
    """Rotate by up to ``degrees``, scale within ``scale`` and shift by up to ``shift`` of the size, each image
    its own draw, in one ``affine_grid``/``grid_sample`` call (bilinear, zeros outside) — the distortions that
    handwriting has and a pure shift does not."""
    import math

    import torch
    import torch.nn.functional as F

    batch = images.shape[0]
    draws = torch.rand(4, batch, generator=generator).to(images.device)
    angle = (draws[0] * 2 - 1) * math.radians(degrees)
    zoom = scale[0] + draws[1] * (scale[1] - scale[0])
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([
        torch.stack([cos, -sin, (draws[2] * 2 - 1) * shift * 2], dim=1),
        torch.stack([sin, cos, (draws[3] * 2 - 1) * shift * 2], dim=1),
    ], dim=1)  # N×2×3, mapping output to input coordinates in [-1, 1] (a shift of 1 is half the image)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.round_().clamp_(0, 255).to(images.dtype)


@dataclass(frozen=True)
class AugmentPreset:
    """One ``--augment`` preset: ``build(image_size)`` returns the batch augmentation (None: leave images as they
    are). Registered with :func:`register_augmentation`; listing, validation and ``--help`` read the registry."""

    name: str
    description: str
    build: Callable[[tuple[int, int]], Augmentation | None]


AUGMENT_PRESETS: dict[str, AugmentPreset] = {}


def register_augmentation(name: str, description: str,
                          build: Callable[[tuple[int, int]], Augmentation | None]) -> AugmentPreset:
    AUGMENT_PRESETS[name] = preset = AugmentPreset(name, description, build)
    return preset


def _crop_padding(image_size: tuple[int, int]) -> int:
    return max(2, round(min(image_size) / 8))


def make_augmentation(preset: str, image_size: tuple[int, int]) -> Augmentation | None:
    """The batch augmentation of a registered preset, for images of ``image_size``."""
    if preset not in AUGMENT_PRESETS:
        raise UsageError(f"unknown augmentation {preset!r}; choose one of: {', '.join(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[preset].build(image_size)


def _shift(image_size: tuple[int, int]) -> Augmentation:
    padding = _crop_padding(image_size)
    return lambda images, generator: random_crop(images, generator, padding)


def _crop_flip(image_size: tuple[int, int]) -> Augmentation:
    padding = _crop_padding(image_size)
    return lambda images, generator: random_hflip(random_crop(images, generator, padding), generator)


register_augmentation("none", "no augmentation", lambda image_size: None)
register_augmentation("shift", "random shift: crop with zero padding (digits)", _shift)
register_augmentation("crop-flip", "crop with padding and horizontal flip (natural images)", _crop_flip)
register_augmentation("affine", "small random rotation, scale and shift per image (handwriting)",
                      lambda image_size: random_affine)
