"""Your own images: a folder with one sub-folder per class, optionally split into ``train/``, ``val/``, ``test/``.

Files are found and labelled by :func:`scan_folder`, then decoded once (torchvision.io, in DataLoader workers),
resized to one square size and kept in memory as a single uint8 tensor, so training takes the same fast path as
the built-in datasets and no epoch decodes again. Without ``val/`` the validation images are held out of
``train`` with ``--val-split`` (default 10%) and ``--seed``, exactly as eval rebuilds them.

The checkpoint stores the folder, the class names (the folder names), the channel count (grey when every image
is grey, else RGB), the size, and the mean/std measured on the training images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.errors import DataError, UsageError
from cnnctl.registry import DatasetSpec, register_dataset

if TYPE_CHECKING:
    import torch

    from cnnctl.config import TrainConfig
    from cnnctl.data.base import ImageTensors
    from cnnctl.data.splits import PreparedData
    from cnnctl.registry import ModelSpec

DEFAULT_IMAGE_SIZE = 64  # folder images are resized to this square unless --img-size (or a fixed-input model) says
DEFAULT_VAL_SPLIT = 0.1
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MEMORY_FRACTION = 0.5  # refuse to cache more than this share of the free memory
_EXAMPLES = 3

Log = Callable[[str], None]


@dataclass
class FolderScan:
    """What a folder holds: class names and, per split, (file, class index) pairs in a stable order."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, list[tuple[Path, int]]] = field(default_factory=dict)
    skipped: int = 0  # hidden files and files that are not images


def _visible_dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error


def _images_in(directory: Path) -> tuple[list[Path], int]:
    """Image files under ``directory`` (recursively, sorted); hidden and non-image files are counted, not kept."""
    from cnnctl.data.images import IMAGE_SUFFIXES

    found: list[Path] = []
    skipped = 0
    for current, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                skipped += 1
            else:
                found.append(Path(current) / name)
    return found, skipped


def _loose_files(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.is_file())


def _layout(root: Path) -> dict[str, Path]:
    """``{"train": root}`` for class folders directly under ``root``, else the split folders it has."""
    subdirs = _visible_dirs(root)
    names = {d.name.lower(): d for d in subdirs}
    if "train" in names and all(name in SPLIT_FOLDERS for name in names):
        splits: dict[str, Path] = {}
        for name, directory in names.items():
            split = SPLIT_FOLDERS[name]
            if split in splits:
                raise DataError(f"{root} has both {splits[split].name}/ and {directory.name}/; keep one of them")
            splits[split] = directory
        return splits
    return {"train": root}


def scan_folder(root: str | Path, *, classes: Sequence[str] | None = None, log: Log = lambda _: None,
                min_classes: int = 2) -> FolderScan:
    """Find the images of a folder dataset and label them by their class folder.

    Without ``classes`` the class names are the sorted sub-folders of ``train`` that hold images (an empty class
    folder is reported and left out); with ``classes`` (eval: the checkpoint's) folder names are mapped to them and
    an unknown one is an error.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder", hint="--data takes a folder with one sub-folder per class")
    split_dirs = _layout(root)
    skipped = 0
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, directory in split_dirs.items():
        class_dirs = _visible_dirs(directory)
        loose = _loose_files(directory)
        if loose and split_dirs.get("train") == root:
            log(f"ignoring {loose} file(s) directly in {directory}: images must be inside a class folder")
        skipped += loose
        found: dict[str, list[Path]] = {}
        for class_dir in class_dirs:
            images, ignored = _images_in(class_dir)
            skipped += ignored
            found[class_dir.name] = images
        per_split[split] = found

    train_found = per_split["train"]
    if classes is None:
        empty = [name for name, images in train_found.items() if not images]
        if empty:
            log(f"{len(empty)} class folder(s) without images left out: {', '.join(empty[:5])}"
                + (" …" if len(empty) > 5 else ""))
        class_names = tuple(name for name, images in train_found.items() if images)
        total = sum(len(images) for images in train_found.values())
        where = split_dirs["train"]
        if total == 0:
            raise DataError(f"no images found in {where} (looked for {_suffix_list()} inside class folders"
                            + (f"; skipped {skipped} other files" if skipped else "") + ")",
                            hint="put each class's images in its own sub-folder")
        if len(class_names) < min_classes:
            raise DataError(f"{where} has images of only one class ({class_names[0]!r}); a classifier needs at "
                            "least two", hint="add a sub-folder per class")
    else:
        class_names = tuple(classes)
    index = {name: position for position, name in enumerate(class_names)}
    scan = FolderScan(root, class_names, skipped=skipped)
    for split, found in per_split.items():
        items: list[tuple[Path, int]] = []
        for name, images in found.items():
            if not images:
                continue
            if name not in index:
                known = ", ".join(class_names[:10]) + (" …" if len(class_names) > 10 else "")
                raise DataError(f"{split_dirs[split] / name} is not one of the classes ({known})",
                                hint="the class folders must match those training used")
            items.extend((path, index[name]) for path in images)
        scan.splits[split] = items
    if skipped:
        log(f"skipped {skipped} hidden or non-image file(s) in {root}")
    return scan


def _suffix_list() -> str:
    from cnnctl.data.images import IMAGE_SUFFIXES

    return "/".join(sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES))


# --------------------------------------------------------------------------------------------------------------
# decoding


class _DecodeFiles:
    """A map-style dataset for torch's DataLoader: position → (position, RGB image at ``size`` or None, problem)."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int]):
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, position: int) -> tuple[int, Any, str]:
        from cnnctl.data.images import read_image, resize_to

        try:
            image = read_image(self.files[position], channels=3, size=self.size)
        except DataError as error:
            return position, None, error.message
        return position, resize_to(image, self.size), ""


def _collate(batch: list[tuple[int, Any, str]]) -> list[tuple[int, Any, str]]:
    return batch


def _free_memory() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def default_workers(count: int) -> int:
    """Decode in the main process for a handful of files (starting workers costs more), else up to 8 workers."""
    return 0 if count < 256 else max(1, min(8, os.cpu_count() or 1))


@dataclass
class Decoded:
    images: torch.Tensor  # uint8 N×3×H×W of the files that decoded
    kept: list[int]  # their positions in the input list
    failures: list[tuple[Path, str]]
    grey: bool  # every decoded image has equal R, G and B


def decode_files(files: Sequence[Path], size: tuple[int, int], *, workers: int | None = None) -> Decoded:
    """Decode and resize ``files`` into one uint8 tensor, in DataLoader workers. Unreadable files are reported
    back, not raised: one broken file should not stop a training run."""
    import torch
    from torch.utils.data import DataLoader

    from cnnctl.data.images import is_grey

    count = len(files)
    needed = count * 3 * size[0] * size[1]
    free = _free_memory()
    if free is not None and needed > MEMORY_FRACTION * free:
        raise UsageError(f"{count:,} images at {size[0]}x{size[1]} need {needed / 2**30:.1f} GiB in memory, more "
                         f"than half of the {free / 2**30:.1f} GiB free", hint="pass a smaller --img-size or --limit")
    workers = default_workers(count) if workers is None else workers
    images = torch.empty((count, 3, *size), dtype=torch.uint8)
    ok = torch.zeros(count, dtype=torch.bool)
    grey = True
    failures: list[tuple[Path, str]] = []
    if count:
        batches = DataLoader(_DecodeFiles(files, size), batch_size=64, num_workers=workers, collate_fn=_collate)
        for batch in batches:
            for position, image, problem in batch:
                if image is None:
                    failures.append((files[position], problem))
                    continue
                images[position] = image
                ok[position] = True
                grey = grey and bool(is_grey(image))
    kept = ok.nonzero().flatten()
    return Decoded(images[kept] if len(kept) < count else images, kept.tolist(), failures, grey)


def _report_failures(failures: list[tuple[Path, str]], log: Log) -> None:
    if not failures:
        return
    log(f"could not read {len(failures)} image(s); they are left out:")
    for _, problem in failures[:_EXAMPLES]:
        log(f"  {problem}")
    if len(failures) > _EXAMPLES:
        log(f"  … and {len(failures) - _EXAMPLES} more")


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N×C×H×W in [0, 1] units, in chunks (no float copy of the whole set)."""
    import torch

    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], 1024):
        chunk = images[start:start + 1024].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    pixels = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / pixels
    std = (squares / pixels - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)  # a flat channel must not divide by 0
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


# --------------------------------------------------------------------------------------------------------------
# the splits training and eval see


@dataclass
class FolderSplits:
    """File lists per split, chosen exactly as training chose them (eval rebuilds the same lists)."""

    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]] | None
    test: list[tuple[Path, int]] | None


def choose_splits(scan: FolderScan, *, val_split: float | None, seed: int, limit: int | None) -> FolderSplits:
    """The files of each split: ``val/`` if the folder has one, else ``--val-split`` of ``train/`` held out,
    then ``--limit``; the positions come from :func:`cnnctl.data.splits.split_positions`, as for every dataset."""
    from cnnctl.data.splits import split_positions

    train = scan.splits["train"]
    val = scan.splits.get("val")
    fraction = 0 if val is not None else (DEFAULT_VAL_SPLIT if val_split is None else val_split)
    train_index, val_index = split_positions(len(train), fraction, seed, limit)
    if val_index is not None:
        val = [train[i] for i in val_index.tolist()]
    if train_index is not None:
        train = [train[i] for i in train_index.tolist()]
    return FolderSplits(train, val or None, scan.splits.get("test") or None)


def load_items(items: list[tuple[Path, int]], classes: tuple[str, ...], size: tuple[int, int], *, source: str,
               workers: int | None = None, log: Log = lambda _: None) -> tuple[ImageTensors, bool]:
    """Decode a split's files into :class:`ImageTensors` (RGB); also say whether every image was grey."""
    import torch

    from cnnctl.data.base import ImageTensors

    decoded = decode_files([path for path, _ in items], size, workers=workers)
    _report_failures(decoded.failures, log)
    labels = torch.tensor([items[i][1] for i in decoded.kept], dtype=torch.int64)
    return ImageTensors(decoded.images, labels, classes, source=source), decoded.grey


def _to_grey(data: ImageTensors) -> ImageTensors:
    """Every image is grey: keep one of its three equal channels."""
    from cnnctl.data.base import ImageTensors

    return ImageTensors(data.images[:, :1].contiguous(), data.labels, data.classes, data.source)


def prepare_folder(config: TrainConfig, model: ModelSpec, log: Log) -> PreparedData:
    """Training's view of ``config.data_dir`` (the folder dataset's ``DatasetSpec.prepare``).

    Records the absolute folder in ``config`` so the checkpoint (and eval) can find it again.
    """
    from cnnctl.data.splits import PreparedData, resolve_preprocessing

    if not config.data_dir:
        raise UsageError("the folder dataset needs --data PATH (a folder with one sub-folder per class)")
    if config.dataset not in ("folder", "mnist"):  # mnist is only the option's default
        raise UsageError(f"--data and --dataset {config.dataset} contradict each other; pass one of them")
    root = Path(config.data_dir).expanduser().resolve()
    scan = scan_folder(root, log=log)
    from cnnctl.registry import get_dataset_spec

    # What ran goes into the saved configuration: a folder with its own val/ holds nothing out of train/.
    config.resolve_data_defaults(get_dataset_spec("folder"),
                                 default_val_split=0 if scan.splits.get("val") is not None else DEFAULT_VAL_SPLIT)
    chosen = choose_splits(scan, val_split=config.val_split, seed=config.seed, limit=config.limit)
    side = DEFAULT_IMAGE_SIZE if config.img_size is None else config.img_size
    # Decode straight to the size the model will see (a fixed-input model may ask for another one).
    size = resolve_preprocessing(model, (3, side, side), (0.0,) * 3, (1.0,) * 3, None).image_size
    loaded: dict[str, ImageTensors | None] = {}
    all_grey = True
    total = sum(len(items or ()) for items in (chosen.train, chosen.val, chosen.test))
    log(f"decoding {total:,} images from {root} at {size[0]}x{size[1]} (kept in memory)")
    for split in ("train", "val", "test"):
        items = getattr(chosen, split)
        if not items:
            loaded[split] = None
            continue
        data, grey = load_items(items, scan.classes, size, source=str(root / split), log=log)
        all_grey = all_grey and grey
        loaded[split] = data
    train = loaded["train"]
    if train is None or len(train) == 0:
        raise DataError(f"none of the training images in {root} could be read")
    missing = [name for index, name in enumerate(scan.classes) if not bool((train.labels == index).any())]
    if missing:
        log(f"warning: no training image of class(es) {', '.join(missing[:5])} (unreadable files or --limit); "
            "the model cannot learn them")
    if all_grey:
        loaded = {split: _to_grey(data) if data is not None else None for split, data in loaded.items()}
        train = loaded["train"]
    assert train is not None
    mean, std = _channel_stats(train.images)
    channels = train.images.shape[1]
    preprocessing = resolve_preprocessing(model, (channels, *size), mean, std, None)
    config.data_dir = str(root)
    config.dataset = "folder"
    log(f"{root}: {len(scan.classes)} classes, {len(train):,} training images"
        + (f", {len(loaded['val']):,} validation" if loaded["val"] is not None else "")
        + (f", {len(loaded['test']):,} test" if loaded["test"] is not None else "")
        + f", {'grey' if channels == 1 else 'RGB'} at {size[0]}x{size[1]}")
    return PreparedData(train, loaded["val"], loaded["test"], scan.classes, preprocessing, "folder")


def load_folder_eval_split(meta: Any, split: str = "test", *, data_dir: str | None = None,
                           log: Log = lambda _: None, **_: Any) -> ImageTensors:
    """The folder dataset's ``DatasetSpec.eval_split``: the images eval should use, labelled by the checkpoint's
    class names: ``test/``, or the ``val``/``train`` split rebuilt exactly as training chose it. Without
    ``test/``, the folder the checkpoint was trained on is evaluated on the validation images held out in
    training, any other folder (``--data``) on all its images.
    """
    folder = data_dir or meta.data_dir
    if not folder:
        raise UsageError("the checkpoint does not say which folder it was trained on", hint="pass --data PATH")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UsageError(f"the folder this checkpoint was trained on, {root}, does not exist",
                         hint="pass --data PATH to evaluate on another copy")
    if split not in ("test", "val", "train"):
        raise UsageError(f"unknown split {split!r}; choose test, val or train")
    config = meta.config or {}
    scan = scan_folder(root, classes=meta.classes, log=log, min_classes=1)
    trained_here = bool(meta.data_dir) and Path(meta.data_dir).expanduser().resolve() == root.resolve()
    chosen = choose_splits(scan, val_split=config.get("val_split"), seed=int(config.get("seed", 0)),
                           limit=config.get("limit"))
    items = getattr(chosen, split)
    if split == "test" and items is None:
        if trained_here:
            log(f"{root} has no test/ folder: evaluating on the validation images held out in training")
            split, items = "val", chosen.val
        else:  # a folder training never saw: all of it is new
            items = scan.splits["train"] + (scan.splits.get("val") or [])
            log(f"{root} has no test/ folder: evaluating on all {len(items):,} of its images")
    if not items:
        raise UsageError(f"{root} has no {split} images", hint="use --split train, or add a val/ or test/ folder")
    data, _ = load_items(items, tuple(meta.classes), tuple(meta.preprocessing.image_size),
                         source=str(root / split), log=log)
    if len(data) == 0:
        raise DataError(f"none of the {split} images in {root} could be read")
    from cnnctl.data.base import ImageTensors
    from cnnctl.data.images import to_grey

    images = to_grey(data.images) if meta.preprocessing.channels == 1 else data.images
    return ImageTensors(images, data.labels, data.classes, data.source)


def load_folder(directory: Path, split: str) -> ImageTensors:
    """``DatasetSpec.loader`` of the folder dataset: one split of an image folder at the default size, the
    validation images held out of ``train/`` as training holds them out by default (seed 0)."""
    scan = scan_folder(directory)
    chosen = choose_splits(scan, val_split=None, seed=0, limit=None)
    items = getattr(chosen, split, None)
    if not items:
        raise UsageError(f"{directory} has no {split} images")
    data, grey = load_items(items, scan.classes, (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
                            source=str(Path(directory) / split))
    return _to_grey(data) if grey else data


FOLDER = register_dataset(
    DatasetSpec(
        name="folder",
        description="your own images: train ARCH --data PATH (a folder per class)",
        classes=(),  # the class folders', found by scan_folder; mean/std are measured on the training images
        image_shape=(3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
        mean=(),
        std=(),
        train_size=0,
        test_size=0,
        loader=load_folder,
        default_val_split=0,  # unused: folders hold out DEFAULT_VAL_SPLIT of train/ unless they have val/
        augment="none",
        prepare=prepare_folder,
        eval_split=load_folder_eval_split,
        extra={"kind": "folder", "download_hint": "train on your images with `cnnctl train ARCH --data PATH`"},
    )
)
