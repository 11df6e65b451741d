"""From a dataset name to ready splits: download if missing, load, hold out validation, fit to the model.

Every dataset goes through the same two entry points, whatever it is made of: :func:`prepare_data` (training's
train/val/test) and :func:`eval_split` (the split a checkpoint is evaluated on, rebuilt exactly as training
chose it). A dataset whose :class:`~cnnctl.registry.DatasetSpec` has its own ``prepare``/``eval_split`` (the
image folder) uses them; the others get the tensor path below. Validation and ``--limit`` positions come from
one function, :func:`split_positions`, for every dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.base import ImageTensors, Preprocessing
from cnnctl.data.download import ensure_files
from cnnctl.errors import UsageError
from cnnctl.models.weights import in_memory_preprocessing
from cnnctl.recipe.class_weights import check_class_names
from cnnctl.registry import DatasetSpec, ModelSpec, get_dataset_spec

if TYPE_CHECKING:
    import torch

    from cnnctl.recipe.config import TrainConfig

Log = Callable[[str], None]


@dataclass
class PreparedData:
    """What training gets from a dataset: the splits (uint8, in memory), class names, how images meet the model
    and the dataset's name for the checkpoint. ``resolved``: training options the data settled (the folder a
    ``--data`` run read, as its dataset), which the trainer's setup writes into the configuration; code below
    the engine never changes a TrainConfig."""

    train: ImageTensors
    val: ImageTensors | None
    test: ImageTensors | None
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    dataset_label: str
    resolved: dict[str, Any] = field(default_factory=dict)


def training_dataset(config: TrainConfig) -> DatasetSpec:
    """The dataset a training configuration names: ``--data PATH`` means the image folder."""
    return get_dataset_spec("folder" if config.data_dir else config.dataset)


def prepare_data(config: TrainConfig, model: ModelSpec, log: Log = lambda _: None) -> PreparedData:
    """Load (downloading if needed) the splits that ``config`` names and fit them to its architecture."""
    spec = training_dataset(config)
    if spec.prepare is not None:
        return spec.prepare(config, model, log)
    check_class_names(config.class_weights, spec.classes)  # before anything is downloaded or read
    train = load_split(spec, "train", root=config.root, mirror=config.mirror, log=log)
    test = load_split(spec, "test", root=config.root, mirror=config.mirror, log=log)
    val_split = spec.default_val_split if config.val_split is None else config.val_split
    train_index, val_index = split_positions(len(train), val_split, config.seed, config.limit)
    val = train.subset(val_index) if val_index is not None else None
    train = train.subset(train_index) if train_index is not None else train
    preprocessing = resolve_preprocessing(model, spec.image_shape, spec.mean, spec.std, config.img_size)
    preprocessing = in_memory_preprocessing(config, preprocessing)
    return PreparedData(train, val, test, spec.classes, preprocessing, spec.name)


def eval_split(meta: Any, *, dataset: str | None = None, split: str = "test", root: str | None = None,
               mirror: str | None = None, data_dir: str | None = None, log: Log | None = None) -> ImageTensors:
    """The split a checkpoint should be evaluated on; ``val`` and ``train`` are rebuilt exactly as training
    chose them (same seed, same --val-split and --limit)."""
    log = log or (lambda _: None)
    name = "folder" if data_dir else (dataset or meta.dataset)
    if not name:
        raise UsageError("the checkpoint does not say which dataset it was trained on", hint="pass --dataset")
    spec = get_dataset_spec(name)
    if spec.eval_split is not None:
        return spec.eval_split(meta, split, root=root, mirror=mirror, data_dir=data_dir, log=log)
    if len(spec.classes) != meta.num_classes:
        raise UsageError(f"{spec.name} has {len(spec.classes)} classes but the checkpoint predicts "
                         f"{meta.num_classes}")
    if split == "test":
        return load_split(spec, "test", root=root, mirror=mirror, log=log)
    if split not in ("train", "val"):
        raise UsageError(f"unknown split {split!r}; choose test, val or train")
    train = load_split(spec, "train", root=root, mirror=mirror, log=log)
    config = meta.config or {}
    val_split = spec.default_val_split if config.get("val_split") is None else config["val_split"]
    train_index, val_index = split_positions(len(train), val_split, int(config.get("seed", 0)), config.get("limit"))
    if split == "train":
        return train.subset(train_index) if train_index is not None else train
    if val_index is None:
        raise UsageError("this run held out no validation split", hint="use --split test")
    return train.subset(val_index)


def dataset_directory(spec: DatasetSpec, *, root: str | None, mirror: str | None,
                      log: Callable[[str], None]) -> Path:
    """Where the dataset's files are, downloading (and verifying) whatever is missing."""
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


def limit_indices(total: int, limit: int | None, seed: int) -> torch.Tensor | None:
    """``--limit``: ``limit`` positions of ``total`` drawn at random (fixed by ``seed``), or None to keep all."""
    import torch

    if limit is None or limit >= total:
        return None
    generator = torch.Generator().manual_seed(seed + 1)  # not the permutation that chose the validation images
    return torch.randperm(total, generator=generator)[:limit].sort().values


def split_positions(total: int, val_split: float, seed: int, limit: int | None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Positions among a training split of ``total`` items: (train, validation), validation held out first
    (``val_split`` < 1 a fraction, ≥ 1 a count), then ``--limit`` drawn from the rest; both fixed by ``seed``.
    None means "all of them" for train and "none" for validation. Every dataset's splits come from here."""
    train_index, val_index = split_indices(total, val_split, seed)
    limited = limit_indices(len(train_index), limit, seed)
    if limited is not None:
        train_index = train_index[limited]
    elif val_index is None:
        return None, None
    return train_index, val_index


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
