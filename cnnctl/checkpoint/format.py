"""Checkpoints: safetensors files whose metadata is enough to rebuild the model and its preprocessing.

Tensor names are the model's own ``state_dict()`` keys, so a file also loads into the plain model with
``model.load_state_dict(safetensors.torch.load_file(path))``. Metadata is one JSON document under the key
``cnnctl``. Nothing here ever unpickles.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.base import Preprocessing
from cnnctl.errors import CheckpointError, first_line

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
METADATA_KEY = "cnnctl"


@dataclass
class CheckpointMeta:
    arch: str
    arch_args: dict[str, Any]
    classes: list[str]
    preprocessing: Preprocessing
    dataset: str | None = None
    data_dir: str | None = None
    epoch: int | None = None
    metrics: dict[str, float] | None = None
    versions: dict[str, str] | None = None
    config: dict[str, Any] | None = None  # the training options (to rebuild the validation split, to resume)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "arch": self.arch,
                "arch_args": self.arch_args,
                "num_classes": self.num_classes,
                "classes": self.classes,
                "preprocessing": self.preprocessing.to_dict(),
                "input_shape": list(self.preprocessing.input_shape),
                "dataset": self.dataset,
                "data_dir": self.data_dir,
                "epoch": self.epoch,
                "metrics": self.metrics or {},
                "versions": self.versions or versions(),
                "config": self.config or {},
            }
        )

    @classmethod
    def from_json(cls, text: str, *, source: str) -> CheckpointMeta:
        """Parse metadata checked against the schema (``checkpoint_schema``): a bad field is one error naming it."""
        from cnnctl.checkpoint_schema import parse_document

        data = parse_document(text, source)
        return cls(
            arch=data["arch"],
            arch_args=data["arch_args"],
            classes=data["classes"],
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            dataset=data["dataset"],
            data_dir=data["data_dir"],
            epoch=data["epoch"],
            metrics=data["metrics"],
            versions=data["versions"],
            config=data["config"],
        )


def versions() -> dict[str, str]:
    import torch

    from cnnctl import __version__

    found = {"cnnctl": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import torchvision

        found["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    return found


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself inside its training wrappers: DistributedDataParallel's ``.module``, then
    ``torch.compile``'s ``_orig_mod`` (whose state-dict keys carry the wrappers' prefixes)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as standalone contiguous CPU tensors (safetensors refuses shared storage)."""
    model = unwrap(model)
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}


def save(path: str | Path, model: torch.nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` atomically to ``path``."""
    from safetensors.torch import save_file

    from cnnctl.fsutil import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state_tensors(model), str(tmp), metadata={METADATA_KEY: meta.to_json()})
    return path


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read only the metadata (the safetensors header, not the tensors), checked against the schema and against
    the tensors the header lists, so nothing is built from a checkpoint that does not add up."""
    path = existing_checkpoint(path)
    from safetensors import safe_open

    from cnnctl.checkpoint_schema import check_tensors, read_header

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


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from cnnctl.checkpoint_schema import check_dtypes, read_header

    path = existing_checkpoint(path)
    check_dtypes(read_header(path).tensors, str(path))  # bounded, before safetensors parses the header itself
    try:
        return load_file(str(path))
    except Exception as error:
        raise _not_safetensors(path, error) from error


def load(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, CheckpointMeta]:
    """The model a checkpoint describes, with its weights, in eval mode, and its meta. Building the model is the
    models package's job (:func:`cnnctl.models.load_checkpoint`); this name stays for the callers of the file
    API."""
    from cnnctl.models import load_checkpoint

    return load_checkpoint(path, device=device)


def load_weights_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Load exactly matching weights, or raise one error that says what does not match."""
    from cnnctl.checkpoint_schema import shape_problems

    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    problems = shape_problems(expected, {name: tuple(tensor.shape) for name, tensor in tensors.items()})
    if problems:
        raise CheckpointError(f"{source} does not match its architecture: {'; '.join(problems)}")
    model.load_state_dict(tensors, strict=True)


def existing_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a run folder's best (else last) checkpoint."""
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:  # permission denied on a folder on the way, a name too long, ...
        from cnnctl.fsutil import os_reason

        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(error)}",
                              hint="check the permissions of the file and its folders") from error
    if mode is not None and stat.S_ISDIR(mode):
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a folder without best.safetensors or last.safetensors")
    if mode is None or not stat.S_ISREG(mode):
        what = "does not exist" if mode is None else "is not a regular file"
        raise CheckpointError(f"checkpoint {path} {what}", hint="pass a .safetensors file or a run folder")
    return path


def _not_safetensors(path: Path, error: Exception) -> CheckpointError:
    from cnnctl.checkpoint_schema import not_safetensors

    return not_safetensors(path, first_line(error, 120))
