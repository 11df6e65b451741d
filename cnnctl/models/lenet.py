"""The LeNet family: LeNet-5 (LeCun et al. 1998, with ReLU and max-pooling), the Lightning tutorial's LeNet and a
small CNN. Built as named ``nn.Sequential`` stacks so the state-dict keys read like the paper's layer names."""

from __future__ import annotations

from typing import Any

from cnnctl.registry import register_model


def _sequential(layers: list[tuple[str, Any]]) -> Any:
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(OrderedDict(layers))


def _dropout_layer(dropout: float) -> list[tuple[str, Any]]:
    from torch import nn

    return [("dropout", nn.Dropout(dropout))] if dropout > 0 else []


@register_model(
    "lenet5",
    description="classic LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, FC 120-84-classes (ReLU)",
    family="lenet",
    input_size=(32, 32),
    fixed_input=True,
    params=61_706,
    classifier="fc3",
)
def lenet5(num_classes: int = 10, in_channels: int = 1, batch_norm: bool = False, dropout: float = 0.0) -> Any:
    """LeNet-5 for 32×32 input (28×28 digits are padded to 32, as in the paper). ``batch_norm`` adds BN after
    each convolution (the variant used by the performance benchmark)."""
    from torch import nn

    def conv_block(index: int, c_in: int, c_out: int) -> list[tuple[str, Any]]:
        block: list[tuple[str, Any]] = [(f"conv{index}", nn.Conv2d(c_in, c_out, 5, bias=not batch_norm))]
        if batch_norm:
            block.append((f"bn{index}", nn.BatchNorm2d(c_out)))
        return [*block, (f"relu{index}", nn.ReLU(inplace=True)), (f"pool{index}", nn.MaxPool2d(2))]

    return _sequential(
        conv_block(1, in_channels, 6)
        + conv_block(2, 6, 16)
        + [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(16 * 5 * 5, 120)),
            ("relu3", nn.ReLU(inplace=True)),
            ("fc2", nn.Linear(120, 84)),
            ("relu4", nn.ReLU(inplace=True)),
            *_dropout_layer(dropout),
            ("fc3", nn.Linear(84, num_classes)),
        ]
    )


@register_model(
    "lenet",
    description="LeNet as in the Lightning tutorial (Caffe variant): conv 20@5x5, pool, conv 50@5x5, pool, FC 500",
    family="lenet",
    input_size=(28, 28),
    fixed_input=True,
    params=431_080,
    classifier="fc2",
)
def lenet(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> Any:
    from torch import nn

    return _sequential(
        [
            ("conv1", nn.Conv2d(in_channels, 20, 5)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(20, 50, 5)),
            ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(50 * 4 * 4, 500)),
            ("relu3", nn.ReLU(inplace=True)),
            *_dropout_layer(dropout),
            ("fc2", nn.Linear(500, num_classes)),
        ]
    )


@register_model(
    "simplecnn",
    description="small CNN: conv 10@5x5, pool, conv 20@5x5, pool, linear 320-classes",
    family="lenet",
    input_size=(28, 28),
    fixed_input=True,
    params=8_490,
    classifier="fc",
)
def simplecnn(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> Any:
    from torch import nn

    return _sequential(
        [
            ("conv1", nn.Conv2d(in_channels, 10, 5)),
            ("pool1", nn.MaxPool2d(2)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(10, 20, 5)),
            ("pool2", nn.MaxPool2d(2)),
            ("relu2", nn.ReLU(inplace=True)),
            ("flatten", nn.Flatten()),
            *_dropout_layer(dropout),
            ("fc", nn.Linear(320, num_classes)),
        ]
    )
