"""Adapting a network to the data: the first convolution for another number of input channels.

Shared by the torchvision builders (a 1-channel dataset gets a 1-channel stem, instead of the images being
tripled) and by the ``--pretrained`` loader (3-channel weights summed into a 1-channel stem, as timm does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def first_conv_name(model: torch.nn.Module) -> str:
    """The attribute path of the convolution that sees the input: the first ``Conv2d`` the model registers
    (true of every architecture cnnctl builds; the tests check that the adapted model accepts its input)."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise ValueError(f"{type(model).__name__} has no Conv2d layer")


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Filters for ``in_channels`` inputs made from filters for ``weight.shape[1]`` inputs.

    To one channel: the sum over the input channels (a grey image seen by RGB filters gives the same response
    as the summed filter). To more channels: the filters repeated cyclically and scaled so that the response
    to an image with equal channels is unchanged (timm's ``adapt_input_conv``).
    """
    source_channels = weight.shape[1]
    if in_channels == source_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // source_channels)
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
    return tiled * (source_channels / in_channels)


def replace_first_conv(model: torch.nn.Module, in_channels: int) -> str:
    """Give ``model`` a first convolution for ``in_channels`` inputs, at the same attribute path (so the state
    dict keeps its keys); its filters are adapted from the ones it replaces. Returns the path."""
    import torch
    from torch import nn

    name = first_conv_name(model)
    old: nn.Conv2d = model.get_submodule(name)  # type: ignore[assignment]
    if old.in_channels == in_channels:
        return name
    if old.groups != 1:
        raise ValueError(f"the first convolution {name} is grouped; it cannot be adapted to {in_channels} channels")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                    dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, new)
    return name
