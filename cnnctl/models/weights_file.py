"""Reading a local weights file: safetensors, or a plain ``.pth``/``.pt`` state dict through
``torch.load(weights_only=True)``. The bottom of ``--pretrained``: the published-weights catalogue
(:mod:`cnnctl.models.weights`) and the loader (:mod:`cnnctl.models.pretrained`) both read files with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import filekind
from cnnctl.checkpoint.format import existing_checkpoint, read_tensors, wrong_kind_error
from cnnctl.errors import CheckpointError, UsageError, first_line

if TYPE_CHECKING:
    import torch

# Where training frameworks put the weights inside a .pth file (Lightning: state_dict; many scripts: model).
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file. ``.pth``/``.pt`` go through ``torch.load(weights_only=True)``, which
    refuses arbitrary pickled objects; a cnnctl run folder means its best checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = existing_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"--pretrained {path} does not exist",
                              hint="pass a weights file, or `--pretrained imagenet` for the published weights")
    _refuse_other_kinds(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_tensors(path)
    if suffix not in TORCH_SUFFIXES:
        raise UsageError(f"--pretrained {path}: unknown weights format {suffix or '(no suffix)'}",
                         hint="pass a .safetensors file, or a .pth/.pt state dict")
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for objects weights_only refuses, RuntimeError for bad files
        first = first_line(error)
        raise CheckpointError(
            f"--pretrained {path} cannot be read as plain tensors ({first})",
            hint="cnnctl loads .pth files with torch.load(weights_only=True) only; re-save it with "
                 "torch.save(model.state_dict(), path) or convert it to safetensors",
        ) from error
    return _state_dict_in(content, path)


def _refuse_other_kinds(path: Path) -> None:
    """An exported model, an image, a text file... given as --pretrained: named, with what to pass instead
    (rather than the loader's own words about a format it was never meant to read)."""
    kind = filekind.sniff(path)
    if kind in (filekind.ONNX, filekind.TORCHSCRIPT) or (kind is None and path.suffix.lower() == ".onnx"):
        error = wrong_kind_error(path, kind or filekind.ONNX)
        assert error is not None
        raise CheckpointError(f"--pretrained {error.message}", hint=error.hint)
    if kind in (filekind.IMAGE, filekind.TEXT, "json", "html", "pdf"):  # others: the suffix check speaks
        raise CheckpointError(f"--pretrained {path} is {filekind.describe(kind)}, not a weights file",
                              hint="pass a .safetensors file, a .pth/.pt state dict or a run folder")


def _state_dict_in(content: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded .pth: a plain state dict, or one nested under a key like ``state_dict``."""
    import torch

    if isinstance(content, dict):
        tensors = {str(k): v for k, v in content.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        for key in NESTED_STATE_KEYS:
            if isinstance(content.get(key), dict):
                return _state_dict_in(content[key], path)
    raise CheckpointError(f"--pretrained {path} holds no state dict of tensors "
                          f"(found {type(content).__name__}{_keys_of(content)})",
                          hint="save it with torch.save(model.state_dict(), path)")


def _keys_of(content: Any) -> str:
    return f" with keys {', '.join(map(str, list(content)[:5]))}" if isinstance(content, dict) and content else ""

