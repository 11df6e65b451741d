"""Published-weights files made locally (there is no internet here): a freshly initialised torchvision model saved
as torchvision saves its weights (``torch.save(model.state_dict())``), named ``<arch>-<sha256 prefix>.pth`` like
torchvision's own files, and a weights enum that publishes it under that name, with the real enum's transforms
and metadata, so that everything downstream (file names, hash check, preprocessing) runs as with the real one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

OFFICIAL_URL = "https://download.pytorch.org/models"


def save_like_torchvision(model: torch.nn.Module, folder: Path, stem: str) -> Path:
    """``torch.save(state_dict)`` under ``<stem>-<first 8 hex digits of its sha256>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f"{stem}.tmp"
    torch.save(model.state_dict(), scratch)
    digest = hashlib.sha256(scratch.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    scratch.replace(path)
    return path


def make_weights_file(folder: Path, tv_name: str = "mobilenet_v3_small", seed: int = 0) -> Path:
    """A freshly initialised model whose BatchNorm statistics were measured on random images (as a trained
    network's are consistent with its weights; the initial 0/1 would make eval-mode outputs meaningless)."""
    from torchvision.models import get_model

    torch.manual_seed(seed)
    model = get_model(tv_name, weights=None)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, 3, 64, 64))
    for norm in norms:
        norm.momentum = 0.1
    return save_like_torchvision(model, folder, tv_name)


def weights_enum(tv_name: str, file_name: str, url_base: str = OFFICIAL_URL) -> Any:
    """An enum like ``get_model_weights(tv_name)`` whose IMAGENET1K_V1 (= DEFAULT) is ``url_base/file_name``."""
    from torchvision.models import get_model_weights
    from torchvision.models._api import Weights, WeightsEnum

    real_enum = get_model_weights(tv_name)
    real = real_enum.DEFAULT
    published = Weights(url=f"{url_base}/{file_name}", transforms=real.transforms, meta=real.meta)
    return WeightsEnum(real_enum.__name__, [("IMAGENET1K_V1", published), ("DEFAULT", published)])


def publish(monkeypatch: Any, tv_name: str, file_name: str, url_base: str = OFFICIAL_URL) -> Any:
    """Make cnnctl resolve ``tv_name``'s weights to ``file_name`` at ``url_base``; returns the enum."""
    from cnnctl.models import weights

    enum = weights_enum(tv_name, file_name, url_base)
    real = weights.torchvision_weights_enum
    monkeypatch.setattr(weights, "torchvision_weights_enum", lambda name: enum if name == tv_name else real(name))
    weights.resolve_cached.cache_clear()
    return enum
