"""From a dataset name to ready splits: download if missing, load, hold out validation, fit to the model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cnnctl.data.base import ImageTensors, Preprocessing
from cnnctl.errors import UsageError
from cnnctl.registry import DatasetSpec, ModelSpec

if TYPE_CHECKING:
    import torch


def dataset_directory(spec: DatasetSpec, *, root: str | None, mirror: str | None,
                      log: Callable[[str], None]) -> Path:
    """Where the dataset's files are, downloading (and verifying) whatever is missing."""
    from cnnctl.data.download import ensure_files

    return ensure_files(spec.storage_name, spec.files, spec.mirrors, root=Path(root) if root else None,
                        mirror=mirror, log=log, report_present=False)


def load_split(spec: DatasetSpec, split: str, *, root: str | None = None, mirror: str | None = None,
               log: Callable[[str], None] = lambda _: None) -> ImageTensors:
    directory = dataset_directory(spec, root=root, mirror=mirror, log=log)
    return spec.loader(directory, split)


def split_indices(total: int, val_split: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training and validation positions among ``total`` items: ``val_split`` < 1 is a fraction, ≥ 1 a count.
    Fixed by ``seed``, so eval rebuilds exactly the images training held out."""
    import torch

    count = round(val_split * total) if val_split < 1 else int(val_split)
    if count <= 0:
        return torch.arange(total), None
    if count >= total:
        raise UsageError(f"--val-split {val_split} leaves no training data (the training split has {total} images)")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(total, generator=generator)
    return order[count:].sort().values, order[:count].sort().values


def split_train_val(data: ImageTensors, val_split: float, seed: int) -> tuple[ImageTensors, ImageTensors | None]:
    """Hold out a validation set: ``val_split`` < 1 is a fraction, ≥ 1 a count. Fixed by ``seed``."""
    train_index, val_index = split_indices(len(data), val_split, seed)
    if val_index is None:
        return data, None
    return data.subset(train_index), data.subset(val_index)


def limit_indices(total: int, limit: int | None, seed: int) -> torch.Tensor | None:
    """``--limit``: ``limit`` positions of ``total`` drawn at random (fixed by ``seed``), or None to keep all."""
    import torch

    if limit is None or limit >= total:
        return None
    generator = torch.Generator().manual_seed(seed + 1)  # not the permutation that chose the validation images
    return torch.randperm(total, generator=generator)[:limit].sort().values


def limit_training(data: ImageTensors, limit: int | None, seed: int) -> ImageTensors:
    """Train on a random subset of ``limit`` images (after the validation images were held out)."""
    index = limit_indices(len(data), limit, seed)
    return data if index is None else data.subset(index)


def resolve_preprocessing(model: ModelSpec, image_shape: tuple[int, int, int], mean: tuple[float, ...],
                          std: tuple[float, ...], img_size: int | None = None) -> Preprocessing:
    """Decide how the dataset's images meet the model's input: padded (LeNet-5 takes MNIST 28→32, as in the
    paper), resized, or taken as they are for models that accept any size."""
    channels, height, width = image_shape
    if img_size is not None:
        height = width = img_size
    pad = 0
    if model.fixed_input and (height, width) != model.input_size:
        want_h, want_w = model.input_size
        pad_h, pad_w = want_h - height, want_w - width
        if pad_h == pad_w and pad_h > 0 and pad_h % 2 == 0:
            pad = pad_h // 2
        else:
            height, width = want_h, want_w
    if min(height, width) + 2 * pad < model.min_input:
        raise UsageError(
            f"{model.name} needs inputs of at least {model.min_input}x{model.min_input} pixels, "
            f"but the images are {height}x{width}",
            hint=f"pass --img-size {model.min_input} or larger",
        )
    return Preprocessing(channels=channels, image_size=(height, width), pad=pad, mean=tuple(mean), std=tuple(std))
