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
        try:
            data = json.loads(text)
            if data.get("format", 0) > FORMAT_VERSION:
                raise CheckpointError(
                    f"{source} was written by a newer cnnctl (format {data['format']})", hint="upgrade cnnctl"
                )
            return cls(
                arch=str(data["arch"]),
                arch_args=dict(data.get("arch_args") or {}),
                classes=[str(name) for name in data["classes"]],
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                dataset=data.get("dataset"),
                data_dir=data.get("data_dir"),
                epoch=data.get("epoch"),
                metrics=data.get("metrics") or {},
                versions=data.get("versions") or {},
                config=data.get("config") or {},
            )
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise CheckpointError(f"{source}: its cnnctl metadata is damaged ({error})") from error


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
    """Read only the metadata (cheap: the safetensors header, not the tensors)."""
    path = existing_checkpoint(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise _not_safetensors(path, error) from error
    if METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file without cnnctl metadata",
            hint="only checkpoints written by `cnnctl train` can be used here; use --pretrained for other weights",
        )
    return CheckpointMeta.from_json(metadata[METADATA_KEY], source=str(path))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = existing_checkpoint(path)
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
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{name} {tuple(tensors[name].shape)} vs {tuple(expected[name].shape)}"
        for name in expected
        if name in tensors and tensors[name].shape != expected[name].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_few(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not match its architecture: {'; '.join(problems)}")
    model.load_state_dict(tensors, strict=True)


def _few(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def existing_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a run folder's best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a folder without best.safetensors or last.safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", hint="pass a .safetensors file or a run folder")
    return path


def _not_safetensors(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors checkpoint ({first_line(error, 120)})",
        hint="it may be truncated or another format; cnnctl never unpickles checkpoints",
    )
