"""Loading a checkpoint: its metadata checked against the schema and against the tensors the header lists,
then the model built through the model registry with exactly those weights.
The top floor of the checkpoint package (format -> schema -> load)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint.format import (
    DAMAGED_HINT,
    METADATA_KEY,
    TensorInfo,
    _not_safetensors,
    check_dtypes,
    existing_checkpoint,
    read_header,
    read_tensors,
)
from cnnctl.checkpoint.schema import CheckpointMeta, _short, shape_problems
from cnnctl.errors import CheckpointError, CnnctlError, first_line
from cnnctl.models import build_model
from cnnctl.registry import get_model_spec

if TYPE_CHECKING:
    import torch


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read only the metadata (the safetensors header, not the tensors), checked against the schema and against
    the tensors the header lists, so nothing is built from a checkpoint that does not add up."""
    path = existing_checkpoint(path)
    from safetensors import safe_open

    header = read_header(path)  # bounded: refuses a huge header before parsing it
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise _not_safetensors(path, error) from error
    if METADATA_KEY not in header.metadata:
        raise CheckpointError(
            f"{path} is a safetensors file without cnnctl metadata",
            hint="only checkpoints written by `cnnctl train` can be used here; use --pretrained for other weights",
        )
    meta = CheckpointMeta.from_json(header.metadata[METADATA_KEY], source=str(path))
    check_tensors(meta, header.tensors, str(path))
    return meta


def check_tensors(meta: Any, tensors: dict[str, TensorInfo], source: str) -> None:
    """Weights must be floating point, and their names and shapes those of the architecture the metadata
    describes (built on the ``meta`` device: no memory, whatever the arguments say) at its input size."""
    check_dtypes(tensors, source)
    import torch

    spec = get_model_spec(meta.arch)
    channels, height, width = meta.preprocessing.input_shape
    if spec.fixed_input and (height, width) != tuple(spec.input_size):
        raise CheckpointError(f"{source}: checkpoint metadata field 'preprocessing.image_size' gives "
                              f"{height}x{width} inputs (with padding), but {spec.name} takes "
                              f"{spec.input_size[0]}x{spec.input_size[1]}", hint=DAMAGED_HINT)
    if not spec.fixed_input and min(height, width) < spec.min_input:
        raise CheckpointError(f"{source}: checkpoint metadata field 'preprocessing.image_size' gives "
                              f"{height}x{width} inputs, smaller than the {spec.min_input}x{spec.min_input} "
                              f"{spec.name} needs", hint=DAMAGED_HINT)
    try:
        with torch.device("meta"):
            model = build_from_meta(meta)
    except NotImplementedError:  # a builder that computes with tensors (RegNet): load compares the shapes
        return
    except CnnctlError as error:
        raise CheckpointError(f"{source}: checkpoint metadata field 'arch_args' is refused: {error.message}",
                              hint=DAMAGED_HINT) from None
    except Exception as error:  # noqa: BLE001 - a builder refusing its arguments (negative sizes, ...)
        raise CheckpointError(f"{source}: checkpoint metadata field 'arch_args' {_short(meta.arch_args)} cannot "
                              f"build {meta.arch} ({type(error).__name__}: {first_line(error, 120)})",
                              hint=DAMAGED_HINT) from None
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    problems = shape_problems(expected, {name: info.shape for name, info in tensors.items()})
    if problems:
        described = f"{meta.arch} with arch_args {json.dumps(meta.arch_args)}" if meta.arch_args else meta.arch
        raise CheckpointError(f"{source} does not match its architecture ({described}): {'; '.join(problems)}")
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, channels, height, width, device="meta"))
    except NotImplementedError:
        return
    except Exception as error:  # noqa: BLE001 - the input size does not fit the layers
        raise CheckpointError(f"{source}: checkpoint metadata field 'preprocessing' gives {channels}x{height}x"
                              f"{width} inputs, which {meta.arch} cannot take ({first_line(error, 120)})",
                              hint=DAMAGED_HINT) from None


def load(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes (through the model registry), load its weights (exactly
    matching), and return it in eval mode on ``device`` with its :class:`CheckpointMeta`."""
    meta = read_meta(path)
    tensors = read_tensors(path)
    model = build_from_meta(meta)
    load_weights_strict(model, tensors, source=str(path))
    return model.to(device).eval(), meta


def build_from_meta(meta: CheckpointMeta) -> Any:
    """The untrained model a checkpoint's metadata describes (architecture, its arguments, classes, channels)."""
    return build_model(meta.arch, num_classes=meta.num_classes, in_channels=meta.preprocessing.channels,
                       **meta.arch_args)


def load_weights_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Load exactly matching weights, or raise one error that says what does not match."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    problems = shape_problems(expected, {name: tuple(tensor.shape) for name, tensor in tensors.items()})
    if problems:
        raise CheckpointError(f"{source} does not match its architecture: {'; '.join(problems)}")
    model.load_state_dict(tensors, strict=True)

