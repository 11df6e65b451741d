"""Batch augmentations: each is checked against what it must do to every single image, computed independently."""

from __future__ import annotations

import pytest
import torch

from cnnctl.data.augment import make_augmentation, random_affine, random_crop, random_hflip
from cnnctl.errors import UsageError
from cnnctl.recipe.augmentations import AUGMENT_PRESETS


def images(batch: int = 64, channels: int = 1, size: int = 12) -> torch.Tensor:
    return torch.randint(1, 256, (batch, channels, size, size), generator=torch.Generator().manual_seed(3),
                         dtype=torch.int64).to(torch.uint8)


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    batch, padding = images(), 2
    out = random_crop(batch, torch.Generator().manual_seed(0), padding)
    padded = torch.nn.functional.pad(batch, (padding,) * 4)
    offsets = set()
    for original, cropped in zip(padded, out):
        windows = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if torch.equal(original[:, dy:dy + 12, dx:dx + 12], cropped)]
        assert windows, "every output must be a window of its own padded image"
        offsets.add(windows[0])
    assert len(offsets) > 5  # offsets are drawn per image


def test_random_hflip_flips_about_half_and_leaves_the_rest() -> None:
    batch = images()
    out = random_hflip(batch, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, b.flip(2)) for o, b in zip(out, batch)]
    kept = [torch.equal(o, b) for o, b in zip(out, batch)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_random_affine_without_distortion_is_the_identity() -> None:
    batch = images(channels=3)
    out = random_affine(batch, torch.Generator().manual_seed(0), degrees=0.0, scale=(1.0, 1.0), shift=0.0)
    assert out.dtype == torch.uint8 and torch.equal(out, batch)


def test_random_affine_rotates_each_image_by_its_own_angle_and_is_reproducible() -> None:
    square = torch.zeros(32, 1, 28, 28, dtype=torch.uint8)
    square[:, :, 9:19, 9:19] = 255  # a centred square: rotation keeps its area, not its outline
    out = random_affine(square, torch.Generator().manual_seed(1), degrees=30.0, scale=(1.0, 1.0), shift=0.0)
    again = random_affine(square, torch.Generator().manual_seed(1), degrees=30.0, scale=(1.0, 1.0), shift=0.0)
    assert torch.equal(out, again)
    mass = out.float().sum(dim=(1, 2, 3)) / square[0].float().sum()
    assert torch.all((mass - 1).abs() < 0.08)  # area kept under rotation about the centre
    assert len({tuple(o.flatten().tolist()) for o in out}) > 20  # a different angle per image


def test_every_preset_keeps_shape_and_dtype_and_unknown_names_are_refused() -> None:
    batch = images(channels=3, size=32)
    for preset in AUGMENT_PRESETS:
        augment = make_augmentation(preset, (32, 32))
        if preset == "none":
            assert augment is None
            continue
        out = augment(batch, torch.Generator().manual_seed(0))
        assert out.shape == batch.shape and out.dtype == torch.uint8, preset
    with pytest.raises(UsageError, match="affine"):
        make_augmentation("rotate", (32, 32))
