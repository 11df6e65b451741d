"""Test-time augmentation: the class probabilities averaged over several views of each image.

``flip``: the image and its mirror image (2 views). ``crop``: the image and 4 copies shifted diagonally by 1/32 of
its size (1 pixel for digits) towards the corners (5 views; the border is filled by repeating the edge, which for
digits on a black background is black). ``flip-crop``: both, for the image and its mirror (10 views, the
same-size counterpart of the ten-crop). The views are made on the normalised batch, so ``cnnctl eval``,
``cnnctl predict`` and ``cnnctl.predict`` all go through :func:`tta_probabilities`. The loss
with TTA is the negative log of the averaged probability of the true class.

Mirror images are not digits: the flips suit natural images (CIFAR, photos); for digits use ``crop``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cnnctl.recipe.commands import TTA_MODES
from cnnctl.registry import suggest

if TYPE_CHECKING:
    import torch



def check_tta(mode: str | None) -> str:
    mode = (mode or "none").strip().lower()
    if mode not in TTA_MODES:
        raise suggest(mode, list(TTA_MODES), "--tta mode")
    return mode


def tta_views(inputs: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of an N×C×H×W batch that ``mode`` averages over (the batch itself first)."""
    import torch.nn.functional as F

    mode = check_tta(mode)
    bases = [inputs, inputs.flip(3)] if "flip" in mode else [inputs]
    views = list(bases)
    if "crop" in mode:
        height, width = inputs.shape[-2:]
        shift = max(1, round(min(height, width) / 32))
        for base in bases:
            padded = F.pad(base, (shift, shift, shift, shift), mode="replicate")
            for top in (0, 2 * shift):
                for left in (0, 2 * shift):
                    views.append(padded[..., top:top + height, left:left + width])
    return views


def tta_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                      mode: str, *, multilabel: bool = False) -> torch.Tensor:
    """``forward``'s softmax (``multilabel``: each label's sigmoid) averaged over the views of ``inputs`` (float32,
    N×classes)."""
    views = tta_views(inputs, mode)
    total = None
    for view in views:
        logits = forward(view.contiguous()).float()
        probabilities = logits.sigmoid() if multilabel else logits.softmax(dim=1)
        total = probabilities if total is None else total + probabilities
    return total / len(views)

