"""Model summary: one row per leaf layer (name, type, output shape, parameters) and totals with MACs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnctl import checkpoint
from cnnctl.errors import UsageError, first_line
from cnnctl.models import build_model
from cnnctl.registry import get_model_spec

if TYPE_CHECKING:
    import torch


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]
    parameters: int


@dataclass
class ModelSummary:
    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: list[LayerRow] = field(default_factory=list)
    total_parameters: int = 0
    trainable_parameters: int = 0
    macs: int = 0
    parameter_mb: float = 0.0  # megabytes (10^6 bytes) of parameters, as torchinfo's "Params size (MB)"
    buffer_mb: float = 0.0  # BatchNorm running statistics and other buffers, in 10^6 bytes, counted apart

    @property
    def non_trainable_parameters(self) -> int:
        return self.total_parameters - self.trainable_parameters

    def as_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [row.__dict__ for row in self.layers],
            "total_parameters": self.total_parameters,
            "trainable_parameters": self.trainable_parameters,
            "non_trainable_parameters": self.non_trainable_parameters,
            "macs": self.macs,
            "parameter_mb": self.parameter_mb,
            "buffer_mb": self.buffer_mb,
        }


def parse_input_size(text: str, channels: int) -> tuple[int, int, int]:
    """``3x32x32`` (C×H×W); ``32x32`` (H×W) or ``32`` (square) with the model's own ``channels``.

    Two numbers where one looks like a channel count (``3x32``: 3 high, or 3 channels of 32?) are refused: what
    was meant cannot be told."""
    example = f"{channels}x32x32 (channels x height x width) or 32x32 (height x width)"
    try:
        parts = [int(part) for part in text.lower().replace("×", "x").split("x")]
    except ValueError as error:
        raise UsageError(f"--input-size {text!r} is not like {example}") from error
    if min(parts, default=0) < 1 or len(parts) > 3:
        raise UsageError(f"--input-size {text!r} is not like {example}")
    if len(parts) == 1:
        return channels, parts[0], parts[0]
    if len(parts) == 2:
        small, large = sorted(parts)
        if small <= 4 < large and small != large:
            raise UsageError(f"--input-size {text!r} is ambiguous: {parts[0]} channels, or {parts[0]} pixels high?",
                             hint=f"write all three, e.g. {parts[0]}x{parts[1]}x{parts[1]}, or the size alone, "
                                  f"e.g. {large}x{large}")
        return channels, parts[0], parts[1]
    return parts[0], parts[1], parts[2]


def summarize(model: torch.nn.Module, input_shape: tuple[int, int, int], *, arch: str, num_classes: int
              ) -> ModelSummary:
    """Run one forward pass of a 1-image batch under the FLOP counter, recording each leaf's output shape."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            def record(mod: Any, _inputs: Any, output: Any, name: str = name) -> None:
                shape = list(output.shape) if isinstance(output, torch.Tensor) else []
                params = sum(p.numel() for p in mod.parameters(recurse=False))
                rows.append(LayerRow(name, type(mod).__name__, shape, params))

            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_shape))
    except RuntimeError as error:
        first = first_line(error)
        raise UsageError(f"{arch} cannot take a {'x'.join(map(str, input_shape))} input ({first})",
                         hint="pick another --input-size") from error
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    return ModelSummary(arch, input_shape, num_classes, rows, total, trainable, counter.get_total_flops() // 2,
                        parameter_bytes / 1e6, buffer_bytes / 1e6)


def summarize_target(target: str, input_size: str | None, num_classes: int | None) -> ModelSummary:
    """Summary of an architecture name or a checkpoint path (whose metadata gives input size and classes)."""
    from pathlib import Path

    if target.endswith(".safetensors") or Path(target).is_dir() or Path(target).is_file():
        model, meta = checkpoint.load(target)
        shape = (parse_input_size(input_size, meta.preprocessing.channels) if input_size
                 else meta.preprocessing.input_shape)
        return summarize(model, shape, arch=meta.arch, num_classes=meta.num_classes)
    spec = get_model_spec(target)
    shape = parse_input_size(input_size, spec.in_channels) if input_size else (spec.in_channels, *spec.input_size)
    classes = num_classes or 10
    if spec.fixed_input and shape[1:] != spec.input_size:
        raise UsageError(f"{spec.name} takes {spec.input_size[0]}x{spec.input_size[1]} inputs, not "
                         f"{shape[1]}x{shape[2]}", hint=f"use --input-size {shape[0]}x{spec.input_size[0]}x"
                                                        f"{spec.input_size[1]}")
    check_input_size(spec, shape)
    model = build_model(spec.name, num_classes=classes, in_channels=shape[0])
    return summarize(model, shape, arch=spec.name, num_classes=classes)


def check_input_size(spec: Any, shape: tuple[int, int, int]) -> None:
    """Refuse, before building anything, an input the network would shrink below 1×1."""
    channels, height, width = shape
    if not spec.fixed_input and min(height, width) < spec.min_input:
        size = spec.min_input
        raise UsageError(f"{spec.name} would shrink a {height}x{width} input below 1x1: it needs at least "
                         f"{size}x{size}", hint=f"use --input-size {channels}x{size}x{size} (to train on smaller "
                                                f"images, pass --img-size {size} or larger)")
