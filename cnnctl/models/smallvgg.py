"""A small VGG-style CNN with BatchNorm: the network of the best-accuracy recipe (docs/performance.md), where
LeNet tops out near 99.3% on MNIST. Stages of two 3×3 convolutions (two by default), each stage doubling the
channels and halving the image, then a 128-unit hidden layer with dropout."""

from __future__ import annotations

from typing import Any

from cnnctl.errors import UsageError
from cnnctl.registry import register_model


@register_model(
    "smallvgg",
    description="small VGG-style CNN: 2x(conv 3x3 BN ReLU) 16@, pool, 2x(conv 3x3 BN ReLU) 32@, pool, FC 128, dropout",
    family="vgg-small",
    input_size=(28, 28),
    min_input=4,
    params=218_586,
    classifier="fc2",
)
def smallvgg(num_classes: int = 10, in_channels: int = 1, width: int = 16, dropout: float = 0.25,
             stages: int = 2) -> Any:
    """``width`` channels in the first stage, doubled in each next one. The features are pooled to 28 / 2^stages
    pixels a side (7×7 for two stages: an identity for 28×28 digits), so inputs of other sizes work with the same
    classifier. A third stage costs about what widening the first two by a third does (it runs on 7×7 maps) and
    gives the network more depth and channels for the same time."""
    if not (isinstance(stages, int) and 1 <= stages <= 4):
        raise UsageError(f"smallvgg takes 1 to 4 stages, got {stages!r}")
    from collections import OrderedDict

    from torch import nn

    layers: list[tuple[str, Any]] = []
    channels = in_channels
    for stage in range(1, stages + 1):
        out_channels = width * 2 ** (stage - 1)
        for index in (1, 2):
            name = f"{stage}_{index}"
            layers += [(f"conv{name}", nn.Conv2d(channels, out_channels, 3, padding=1, bias=False)),
                       (f"bn{name}", nn.BatchNorm2d(out_channels)),
                       (f"relu{name}", nn.ReLU(inplace=True))]
            channels = out_channels
        layers.append((f"pool{stage}", nn.MaxPool2d(2)))
    side = 28 >> stages
    layers += [
        ("resize", nn.AdaptiveAvgPool2d((side, side))),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(channels * side * side, 128)),
        ("relu", nn.ReLU(inplace=True)),
        ("dropout", nn.Dropout(dropout)),
        ("fc2", nn.Linear(128, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))
