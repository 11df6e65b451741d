"""ResNets for small images (CIFAR-style, He et al. 2016 §4.2 as commonly trained on 32×32): a 3×3 stride-1 stem
and no max-pool, so a 32×32 image reaches the last stage at 4×4 instead of 1×1.

Built from torchvision's own ``ResNet`` with the stem swapped, so the state-dict keys are torchvision's
(``conv1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``). The ImageNet versions are ``tv:resnet18`` etc.
(see :mod:`cnnctl.models.torchvision_zoo`).
"""

from __future__ import annotations

import functools
from typing import Any

from cnnctl.registry import ModelSpec, add_model

# name → (block, blocks per stage, parameters at 3×32×32 and 10 classes)
SMALL_IMAGE_RESNETS: dict[str, tuple[str, tuple[int, int, int, int], int]] = {
    "resnet18": ("BasicBlock", (2, 2, 2, 2), 11_173_962),
    "resnet34": ("BasicBlock", (3, 4, 6, 3), 21_282_122),
    "resnet50": ("Bottleneck", (3, 4, 6, 3), 23_520_842),
}


def build_small_resnet(name: str, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> Any:
    """ResNet with a 3×3/1 stem and no max-pool; ``dropout`` > 0 adds dropout before the final layer (inside
    ``avgpool``, which has no parameters, so the state-dict keys do not change)."""
    from torch import nn
    from torchvision.models import resnet

    block_name, layers, _ = SMALL_IMAGE_RESNETS[name]
    model = resnet.ResNet(getattr(resnet, block_name), list(layers), num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's rule
    model.maxpool = nn.Identity()
    if dropout > 0:
        model.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Dropout(dropout))
    return model


for _name, (_block, _layers, _params) in SMALL_IMAGE_RESNETS.items():
    _depth = _name.removeprefix("resnet")
    add_model(ModelSpec(
        name=_name,
        builder=functools.partial(build_small_resnet, _name),
        description=f"ResNet-{_depth} for small images: 3x3 stem, no max-pool, {_block} stages 64-128-256-512, "
                    f"global average pool (ImageNet version: tv:{_name})",
        family="resnet",
        input_size=(32, 32),
        in_channels=3,
        params=_params,
        classifier="fc",
    ))
