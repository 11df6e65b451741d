"""Mixup and CutMix on normalised training batches (``torchvision.transforms.v2.MixUp``/``CutMix``).

They turn a batch's integer labels into soft targets (N×classes, each row summing to 1), which the training loss
takes as they are; the training accuracy is then counted against each image's dominant label (the larger share
of the mix). With both ``--mixup`` and ``--cutmix`` each batch gets one of the two, at random, as torchvision's
reference scripts do. Torch's random numbers are forked and seeded from the loader's generator per batch, so
``--seed`` and resume reproduce the mixes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BatchMix = Callable[["torch.Tensor", "torch.Tensor", "torch.Generator"], tuple["torch.Tensor", "torch.Tensor"]]


def make_mixing(mixup: float | None, cutmix: float | None, num_classes: int) -> BatchMix | None:
    """The batch mix for ``--mixup ALPHA`` and/or ``--cutmix ALPHA`` (None when neither is given)."""
    from torchvision.transforms import v2

    choices = []
    if mixup:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not choices:
        return None
    transform = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def apply(inputs: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[inputs.device] if inputs.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return transform(inputs, labels)

    return apply


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Integer labels, or the dominant label of each soft target."""
    return targets.argmax(1) if targets.dim() > 1 else targets
