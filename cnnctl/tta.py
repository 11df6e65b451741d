"""Test-time augmentation: the class probabilities averaged over several views of each image.

``flip``: the image and its mirror image (2 views). ``flip-crop``: those two, each also shifted by a few pixels
towards the four corners (10 views, the same-size counterpart of the ten-crop: the border is filled by repeating
the edge, which for digits on a black background is black). The views are made on the normalised batch, so
``cnnctl eval``, ``cnnctl predict`` and ``cnnctl.predict`` all go through :func:`tta_probabilities`. The loss
with TTA is the negative log of the averaged probability of the true class.

Mirror images are not digits: ``flip`` helps natural images (CIFAR, photos) and hurts digit recognisers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TTA_MODES = ("none", "flip", "flip-crop")


def check_tta(mode: str | None) -> str:
    mode = (mode or "none").strip().lower()
    if mode not in TTA_MODES:
        from cnnctl.registry import suggest

        raise suggest(mode, list(TTA_MODES), "--tta mode")
    return mode


def tta_views(inputs: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of an N×C×H×W batch that ``mode`` averages over (the batch itself first)."""
    import torch.nn.functional as F

    mode = check_tta(mode)
    views = [inputs]
    if mode == "none":
        return views
    views.append(inputs.flip(3))
    if mode == "flip-crop":
        height, width = inputs.shape[-2:]
        shift = max(1, round(min(height, width) / 16))
        padded = F.pad(inputs, (shift, shift, shift, shift), mode="replicate")
        for base in (padded, padded.flip(3)):
            for top in (0, 2 * shift):
                for left in (0, 2 * shift):
                    views.append(base[..., top:top + height, left:left + width])
    return views


def tta_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                      mode: str) -> torch.Tensor:
    """``forward``'s softmax averaged over the views of ``inputs`` (float32, N×classes)."""
    views = tta_views(inputs, mode)
    total = None
    for view in views:
        probabilities = forward(view.contiguous()).float().softmax(dim=1)
        total = probabilities if total is None else total + probabilities
    return total / len(views)

