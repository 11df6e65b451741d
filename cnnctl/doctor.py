"""``cnnctl doctor``: what this installation can do, gathered without changing anything.

Versions come from the installed packages' metadata (nothing optional is imported); only torch is imported, to
ask it about CUDA and MPS. Folders are tested for writing by creating and removing a temporary file.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from cnnctl.data.download import default_root
from cnnctl.engine.threads import threads_for_this_process

# (distribution, what cnnctl uses it for); the optional ones are the extras of pyproject.toml
PACKAGES = (
    ("torch", "everything (core)"),
    ("torchvision", "architectures, image decoding (core)"),
    ("safetensors", "checkpoints (core)"),
    ("typer", "the command line (core)"),
    ("rich", "tables and progress bars (core)"),
    ("numpy", "core"),
    ("matplotlib", "curves.png, confusion.png, predictions.png"),
    ("PyYAML", "config.yaml, --config"),
    ("onnx", "export --format onnx, onnx-fp16, onnx-int8"),
    ("onnxruntime", "running and quantising ONNX exports"),
    ("openvino", "export --format openvino (and -fp16, -int8)"),
    ("nncf", "export --format openvino-int8 (quantisation)"),
    ("scipy", "the svhn dataset"),
    ("timm", "timm architectures"),
    ("tensorboard", "TensorBoard logging"),
    ("mlflow", "MLflow logging"),
    ("optuna", "hyper-parameter search"),
    ("captum", "attributions"),
    ("cleanlab", "label-issue finding"),
)


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def devices() -> list[dict[str, Any]]:
    """CPU, CUDA and MPS as torch sees them."""
    import torch

    choice = threads_for_this_process()
    training = f"training now would take {choice.note}" if choice.note else \
        f"training now would take all {choice.threads} threads"
    rows: list[dict[str, Any]] = [{"name": "cpu", "available": True,
                                   "detail": f"{os.cpu_count()} cores; {training}"}]
    cuda = torch.cuda.is_available()
    detail = ""
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        detail = f"{len(names)}: {', '.join(names)} (CUDA {torch.version.cuda})"
    elif torch.version.cuda is None:
        detail = "(this torch is built without CUDA)"
    rows.append({"name": "cuda", "available": cuda, "detail": detail})
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend and mps_backend.is_available())
    rows.append({"name": "mps", "available": mps, "detail": "Apple GPU" if mps else ""})
    return rows


def folder_state(path: Path) -> tuple[bool, str]:
    """(writable, what it is): an existing folder is written to; a missing one counts as writable where its
    nearest existing parent is (it will be created there)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return False, f"{existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cnnctl-doctor-"):
            pass
    except OSError as error:
        return False, f"not writable ({error.strerror or error})"
    if existing != path:
        return True, f"will be created (in {existing}, writable)"
    return True, "writable"


def folders(root: str | None, runs: str) -> list[dict[str, Any]]:
    data = Path(root).expanduser() if root else default_root()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    rows = []
    for name, path in (("data", data), ("cache", cache), ("runs", Path(runs)), ("working folder", Path.cwd())):
        writable, state = folder_state(path)
        rows.append({"name": name, "path": str(path), "writable": writable, "state": state})
    mirror = os.environ.get("CNNCTL_MIRROR")
    if mirror:
        rows.append({"name": "mirror", "path": mirror, "writable": True, "state": "CNNCTL_MIRROR, tried first"})
    return rows


def diagnose(*, root: str | None = None, runs: str = "runs") -> dict[str, Any]:
    import cnnctl

    return {
        "cnnctl": cnnctl.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
        "platform": platform.platform(terse=True),
        "packages": [{"name": name, "version": package_version(name), "for": use} for name, use in PACKAGES],
        "devices": devices(),
        "folders": folders(root, runs),
    }
