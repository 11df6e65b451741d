"""How the training images look — their brightness and the level of their background (the outer ring of pixels)
— measured when training, stored in the checkpoint (``image_stats``), and the check ``cnnctl predict`` makes
against it: a digit drawn black on white given to a model trained on MNIST's white-on-black digits is
classified with confidence and wrong, and nothing else would say why.

All levels are on the 0-1 scale of the raw pixels (before normalisation), averaged over the channels, at the
checkpoint's image size. Checkpoints written before these statistics existed have none, and are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SAMPLE = 2048  # training images measured (evenly spaced through the split): percentiles settle long before
DARK, LIGHT = 0.35, 0.65  # a background below DARK is dark, above LIGHT light
BRIGHTNESS_MARGIN = 0.2  # how far outside the training images' 1st-99th percentile a mean brightness may lie


def _levels(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: mean brightness and the mean of its outer ring (a band 1/14 of the shorter side wide)."""
    grey = images.float().mean(dim=1) / 255  # N×H×W
    height, width = grey.shape[-2:]
    band = max(1, min(height, width) // 14)
    inner = grey[:, band:height - band, band:width - band]
    ring_sum = grey.sum(dim=(1, 2)) - inner.sum(dim=(1, 2))
    ring_count = height * width - inner.shape[1] * inner.shape[2]
    return grey.mean(dim=(1, 2)), (ring_sum / max(ring_count, 1)).clamp(0, 1)  # (float sums: never below 0)


def training_image_stats(images: torch.Tensor) -> dict[str, float]:
    """Percentiles of the mean brightness (1st, 50th, 99th) and of the background level (10th, 50th, 90th) of
    ``images`` (uint8 N×C×H×W), from at most ``SAMPLE`` of them."""
    import torch

    count = int(images.shape[0])
    if count > SAMPLE:
        images = images[torch.linspace(0, count - 1, SAMPLE).long().to(images.device)]
    brightness, border = _levels(images)
    b = torch.quantile(brightness.double().cpu(), torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)).tolist()
    r = torch.quantile(border.double().cpu(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"brightness_p01": round(b[0], 4), "brightness_p50": round(b[1], 4), "brightness_p99": round(b[2], 4),
            "border_p10": round(r[0], 4), "border_p50": round(r[1], 4), "border_p90": round(r[2], 4)}


STAT_KEYS = ("brightness_p01", "brightness_p50", "brightness_p99", "border_p10", "border_p50", "border_p90")


@dataclass
class InputCheck:
    """Counts, over the images a prediction sees, those unlike the training images: the opposite background
    (inverted polarity) or a mean brightness far outside the training range. :meth:`warning` says it once."""

    stats: dict[str, Any] | None
    seen: int = 0
    inverted: int = 0
    brighter: int = 0
    darker: int = 0
    outside_brightness: float = 0.0  # the sum over the images counted in ``brighter`` and ``darker``

    @property
    def background(self) -> str | None:
        """``dark`` or ``light`` when (nearly) every training image has that background, else None."""
        if not self.stats:
            return None
        if self.stats["border_p90"] < DARK:
            return "dark"
        if self.stats["border_p10"] > LIGHT:
            return "light"
        return None

    def add(self, images: torch.Tensor) -> None:
        """Check a batch of decoded images (uint8 N×C×H×W at the checkpoint's image size)."""
        if not self.stats or images.shape[0] == 0:
            return
        brightness, border = _levels(images)
        self.seen += int(images.shape[0])
        background = self.background
        if background == "dark":
            self.inverted += int((border > LIGHT).sum())
        elif background == "light":
            self.inverted += int((border < DARK).sum())
        brighter = brightness > self.stats["brightness_p99"] + BRIGHTNESS_MARGIN
        darker = brightness < self.stats["brightness_p01"] - BRIGHTNESS_MARGIN
        self.brighter += int(brighter.sum())
        self.darker += int(darker.sum())
        self.outside_brightness += float(brightness[brighter | darker].sum())

    def warning(self) -> str | None:
        """One line about the images that differ clearly from the training images, saying what the model
        expects; None when none does (or the checkpoint has no statistics)."""
        if not self.seen:
            return None
        stats = self.stats or {}
        of = f"{{}} of {self.seen:,} image{'s' if self.seen != 1 else ''}"
        if self.inverted:
            trained = self.background
            opposite, strokes = ("light", "light strokes on black") if trained == "dark" else \
                ("dark", "dark strokes on white")
            one = self.inverted == 1
            return (f"warning: {of.format(self.inverted)} {'has' if one else 'have'} a {opposite} background, but "
                    f"the model was trained on images with a {trained} one ({strokes}) and will likely be wrong "
                    f"on {'it' if one else 'them'}: invert {'its' if one else 'their'} colours first")
        outside = self.brighter or self.darker
        if outside:
            mean = self.outside_brightness / outside
            which = "brighter" if self.brighter >= self.darker else "darker"
            one = outside == 1
            return (f"warning: {of.format(outside)} {'is' if one else 'are'} much {which} than the training "
                    f"images (mean brightness {mean:.2f}; the training images range from "
                    f"{stats['brightness_p01']:.2f} to {stats['brightness_p99']:.2f} on a 0-1 scale); the "
                    f"prediction{'' if one else 's'} on {'it' if one else 'them'} may be unreliable")
        return None
