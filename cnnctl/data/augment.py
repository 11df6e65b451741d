"""Batch augmentations as tensor ops on uint8 N×C×H×W images (random generator passed in for reproducibility).

The geometric presets (shift, crop-flip, affine) draw per image in one vectorised op. The policies from
``torchvision.transforms.v2`` (trivialaugment, randaugment, autoaugment-*, augmix, random erasing) draw ONE random
operation per call, so on a whole batch every image would get the same one; they are applied image by image
instead (:func:`per_image`), each image its own draw, with torch's random numbers forked and seeded from the
loader's generator so that ``--seed`` and resume reproduce them. benchmarks/augment_cost.py measures the cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnctl.errors import UsageError
from cnnctl.recipe.augmentations import AugmentInfo, add_augmentation, get_augmentation

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


class RandomResizedCropFlip:
    """torchvision's ``RandomResizedCrop(size)`` + ``RandomHorizontalFlip``, the augmentation ImageNet weights
    were trained with, for a whole uint8 batch in one ``affine_grid``/``grid_sample`` call: per image a box of
    ``scale`` (0.08-1) of the area with aspect ratio in ``ratio`` (3/4-4/3), at a random place, resized
    (bilinear) to ``size`` and flipped with probability 1/2. The box is clamped to the image rather than redrawn.

    ``crops_to_size`` tells the loader to hand it the images as cached (at the weights' resize size), not
    centre-cropped first."""

    crops_to_size = True

    def __init__(self, size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size = size
        self.scale = scale
        self.ratio = ratio

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import math

        import torch
        import torch.nn.functional as F

        batch, channels = images.shape[:2]
        draws = torch.rand(5, batch, generator=generator).to(images.device)
        area = self.scale[0] + draws[0] * (self.scale[1] - self.scale[0])
        log_ratio = math.log(self.ratio[0]) + draws[1] * (math.log(self.ratio[1]) - math.log(self.ratio[0]))
        aspect = torch.exp(log_ratio)
        width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image's width and height
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        centre_x = (draws[2] * 2 - 1) * (1 - width)
        centre_y = (draws[3] * 2 - 1) * (1 - height)
        flip = torch.where(draws[4] < 0.5, -1.0, 1.0)
        zeros = torch.zeros_like(width)
        theta = torch.stack([torch.stack([width * flip, zeros, centre_x], dim=1),
                             torch.stack([zeros, height, centre_y], dim=1)], dim=1)
        grid = F.affine_grid(theta, [batch, channels, *self.size], align_corners=False)
        cropped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return cropped.round_().clamp_(0, 255).to(images.dtype)


def per_image(transform: Callable[[torch.Tensor], torch.Tensor]) -> Augmentation:
    """A torchvision v2 transform applied to each image of a batch on its own (its own random draw), with torch's
    global random numbers seeded from ``generator`` for that batch and put back afterwards."""

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torch

        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([transform(image) for image in images])

    return apply


def chain(augmentations: list[Augmentation]) -> Augmentation:
    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for augmentation in augmentations:
            images = augmentation(images, generator)
        return images

    return apply


@dataclass(frozen=True)
class AugmentSettings:
    """What a preset may depend on besides the image size."""

    channels: int = 3
    randaugment_magnitude: int = 9
    crop_scale: float = 0.08  # resized-crop-flip: the smallest share of the area a crop keeps


@dataclass(frozen=True)
class AugmentBuilder:
    """How one ``--augment`` preset (an entry of :mod:`cnnctl.recipe.augmentations`) is built: ``build(image_size)``
    (or ``build(image_size, settings)`` when ``settings``) returns the batch augmentation (None: leave images as
    they are)."""

    build: Callable[..., Augmentation | None]
    settings: bool = False


AUGMENT_BUILDERS: dict[str, AugmentBuilder] = {}


def augmentation_builder(name: str, build: Callable[..., Augmentation | None], *, settings: bool = False) -> None:
    """The builder of the preset ``name`` declared in cnnctl/recipe/augmentations.py."""
    AUGMENT_BUILDERS[name] = AugmentBuilder(build, settings)


def register_augmentation(name: str, description: str, build: Callable[..., Augmentation | None], *,
                          channels: int | None = None, settings: bool = False) -> None:
    """A new preset in one go: its entry (listing, validation, ``--help``) and its builder."""
    add_augmentation(AugmentInfo(name, description, channels))
    augmentation_builder(name, build, settings=settings)


def _crop_padding(image_size: tuple[int, int]) -> int:
    return max(2, round(min(image_size) / 8))


def make_augmentation(preset: str, image_size: tuple[int, int], settings: AugmentSettings | None = None,
                      *, random_erasing: float = 0.0) -> Augmentation | None:
    """The batch augmentation of one preset or several comma-separated ones (applied in order), for images of
    ``image_size``, then random erasing with probability ``random_erasing``."""
    settings = settings or AugmentSettings()
    parts: list[Augmentation] = []
    for name in [part.strip() for part in preset.split(",") if part.strip()] or ["none"]:
        entry = get_augmentation(name)
        if entry.channels is not None and entry.channels != settings.channels:
            raise UsageError(f"--augment {name} is a policy for {entry.channels}-channel images, but this run's "
                             f"images have {settings.channels}",
                             hint="use trivialaugment or randaugment, which suit any channel count")
        builder = AUGMENT_BUILDERS[name]
        built = builder.build(image_size, settings) if builder.settings else builder.build(image_size)
        if built is not None:
            parts.append(built)
    if random_erasing > 0:
        from torchvision.transforms import v2

        parts.append(per_image(v2.RandomErasing(p=random_erasing, value=0)))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else chain(parts)


def _shift(image_size: tuple[int, int]) -> Augmentation:
    padding = _crop_padding(image_size)
    return lambda images, generator: random_crop(images, generator, padding)


def _crop_flip(image_size: tuple[int, int]) -> Augmentation:
    padding = _crop_padding(image_size)
    return lambda images, generator: random_hflip(random_crop(images, generator, padding), generator)


augmentation_builder("none", lambda image_size: None)
augmentation_builder("shift", _shift)
augmentation_builder("crop-flip", _crop_flip)
augmentation_builder("affine", lambda image_size: random_affine)
augmentation_builder("resized-crop-flip",
                     lambda image_size, settings: RandomResizedCropFlip(image_size, (settings.crop_scale, 1.0)),
                     settings=True)


def _policy(make: Callable[[AugmentSettings], Callable[[torch.Tensor], torch.Tensor]]
            ) -> Callable[[tuple[int, int], AugmentSettings], Augmentation]:
    return lambda image_size, settings: per_image(make(settings))


def _v2() -> object:
    from torchvision.transforms import v2

    return v2


augmentation_builder("trivialaugment", _policy(lambda settings: _v2().TrivialAugmentWide()), settings=True)
augmentation_builder("randaugment",
                     _policy(lambda settings: _v2().RandAugment(magnitude=settings.randaugment_magnitude)),
                     settings=True)
for _policy_name in ("imagenet", "cifar10", "svhn"):
    augmentation_builder(f"autoaugment-{_policy_name}", _policy(lambda settings, name=_policy_name: _v2().AutoAugment(
        getattr(_v2().AutoAugmentPolicy, name.upper()))), settings=True)
augmentation_builder("augmix", _policy(lambda settings: _v2().AugMix()), settings=True)
