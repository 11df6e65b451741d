"""``--augment`` presets by name: one entry each (description, and the only channel count it is made for). The
option's choices, its checks and ``--help`` read these entries; the batch augmentation each one builds is
cnnctl/data/augment.py's (``register_augmentation`` there adds an entry and its builder at once)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnctl.registry import suggest


@dataclass(frozen=True)
class AugmentInfo:
    """One preset; ``channels``: the only channel count it is made for (None: any)."""

    name: str
    description: str
    channels: int | None = None


AUGMENT_PRESETS: dict[str, AugmentInfo] = {}


def add_augmentation(info: AugmentInfo) -> AugmentInfo:
    AUGMENT_PRESETS[info.name] = info
    return info


def get_augmentation(name: str) -> AugmentInfo:
    if name not in AUGMENT_PRESETS:
        raise suggest(name, list(AUGMENT_PRESETS), "augmentation")
    return AUGMENT_PRESETS[name]


for _name, _description, _channels in (
    ("none", "no augmentation", None),
    ("shift", "random shift: crop with zero padding (digits)", None),
    ("crop-flip", "crop with padding and horizontal flip (natural images)", None),
    ("affine", "small random rotation, scale and shift per image (handwriting)", None),
    ("resized-crop-flip", "random resized crop (--crop-scale) and horizontal flip (fine-tuning ImageNet weights)",
     None),
    ("trivialaugment", "TrivialAugment Wide: one random operation at a random strength per image", None),
    ("randaugment", "RandAugment: 2 random operations per image at --randaugment-magnitude", None),
    ("autoaugment-imagenet", "AutoAugment's policy learned on imagenet (colour images)", 3),
    ("autoaugment-cifar10", "AutoAugment's policy learned on cifar10 (colour images)", 3),
    ("autoaugment-svhn", "AutoAugment's policy learned on svhn (colour images)", 3),
    ("augmix", "AugMix: a blend of augmentation chains per image", None),
):
    add_augmentation(AugmentInfo(_name, _description, _channels))
