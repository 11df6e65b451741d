"""Your own images: a folder with one sub-folder per class, optionally split into ``train/``, ``val/``, ``test/``.

Files are found and labelled by :func:`scan_folder`, then decoded once (data/images.py, in DataLoader workers;
a large JPEG at reduced size, as predict decodes it), resized to one square size and kept in memory as a single
uint8 tensor, so training takes the same fast path as the built-in datasets and no epoch decodes again. A folder
whose decoded images would not fit the memory budget streams instead (``--cache``, data/stream.py): its training
images are decoded by workers every epoch.
Without ``val/`` the validation images are held out of ``train`` with ``--val-split`` (default 10%) and
``--seed``, exactly as eval rebuilds them.

The checkpoint stores the folder, the class names (the folder names), the channel count (grey when every image
is grey, else RGB), the size, and the mean/std measured on the training images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.base import ImageTensors
from cnnctl.data.check import NEAR_DISTANCE, SPLIT_ORDER, CheckReport, FolderCheck
from cnnctl.data.images import (
    ResizeTarget,
    decode_file,
    fit_to_target,
    is_grey,
    perceptual_hash,
    read_item_bytes,
    thumbnail,
    to_grey,
)
from cnnctl.data.items import Source, SourceScan, label_index, register_source, scan_source
from cnnctl.data.splits import PreparedData, resolve_preprocessing, split_positions
from cnnctl.data.stream import StreamedImages, memory_budget, plan_cache, size_text, stream_workers
from cnnctl.data.targets import images_per_class
from cnnctl.errors import DataError, UsageError
from cnnctl.filekind import IMAGE_SUFFIXES
from cnnctl.models.weights import (
    finetune_image_size,
    grey_input_mode,
    imagenet_weights_for_config,
    run_preprocessing,
    with_data_statistics,
)
from cnnctl.progress import plural
from cnnctl.recipe.class_weights import check_class_names
from cnnctl.recipe.options import label
from cnnctl.registry import DatasetSpec, get_dataset_spec, register_dataset

if TYPE_CHECKING:
    import torch

    from cnnctl.data.base import ImageTensors
    from cnnctl.data.splits import PreparedData
    from cnnctl.data.stream import StreamedImages
    from cnnctl.recipe.config import TrainConfig
    from cnnctl.registry import ModelSpec

DEFAULT_IMAGE_SIZE = 64  # folder images are resized to this square unless --img-size (or a fixed-input model) says
DEFAULT_VAL_SPLIT = 0.1
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_EXAMPLES = 3

Log = Callable[[str], None]


FolderScan = SourceScan  # the class folder is one source among others (data/items.py)


@dataclass
class _Walk:
    """Bookkeeping of one folder scan: the data folder's real path (symlinked folders must stay inside it) and
    what was left out."""

    root: str
    skipped: int = 0
    special: list[Path] = field(default_factory=list)
    outside_links: list[Path] = field(default_factory=list)

    def follow(self, directory: Path) -> bool:
        """Whether to enter the symlinked folder ``directory``: only if it stays inside the data folder."""
        real = os.path.realpath(directory)
        inside = real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)
        if not inside and directory not in self.outside_links:
            self.outside_links.append(directory)
        return inside


def _visible_dirs(path: Path, walk: _Walk | None = None) -> list[Path]:
    """Sub-folders of ``path`` that are not hidden (and, with ``walk``, that a symlink does not lead out of the
    data folder)."""
    try:
        found = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error
    if walk is None:
        return found
    return [p for p in found if not p.is_symlink() or walk.follow(p)]


def _images_in(directory: Path, walk: _Walk) -> list[Path]:
    """Image files under ``directory`` (recursively, sorted). Hidden and non-image files are counted in
    ``walk.skipped``; image-named entries that are not regular files (a FIFO, a link to a device) are listed in
    ``walk.special``, never opened; symlinked folders are followed only while they stay inside the data folder."""
    found: list[Path] = []
    pending = [directory]
    visited: set[str] = set()  # real paths: a link loop is walked once
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in visited:
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as error:
            raise DataError(f"cannot read {current}: {error.strerror or error}") from error
        subfolders: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                walk.skipped += 1
            elif _is_dir(entry):
                if not entry.is_symlink() or walk.follow(path):
                    subfolders.append(path)
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                walk.skipped += 1
            elif _is_regular(entry):
                found.append(path)
            else:
                walk.special.append(path)
        pending.extend(reversed(subfolders))  # depth first, in name order
    return sorted(found)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_regular(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()  # follows a symlink: a link to /dev/zero is a device, not a file
    except OSError:
        return False


def _loose_files(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.is_file())


def _layout(root: Path, walk: _Walk) -> dict[str, Path]:
    """``{"train": root}`` for class folders directly under ``root``, else the split folders it has."""
    subdirs = _visible_dirs(root, walk)
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
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise UsageError(f"{root} {problem}", hint="--data takes a folder with one sub-folder per class")
    walk = _Walk(os.path.realpath(root))
    split_dirs = _layout(root, walk)
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, directory in split_dirs.items():
        class_dirs = _visible_dirs(directory, walk)
        loose = _loose_files(directory)
        if loose and split_dirs.get("train") == root:
            log(f"ignoring {loose} file(s) directly in {directory}: images must be inside a class folder")
        walk.skipped += loose
        per_split[split] = {class_dir.name: _images_in(class_dir, walk) for class_dir in class_dirs}
    skipped = walk.skipped
    if walk.outside_links:
        log(f"not following {len(walk.outside_links)} symlinked folder(s) that lead out of {root}: "
            + ", ".join(f"{p} -> {os.path.realpath(p)}" for p in walk.outside_links[:3])
            + (" …" if len(walk.outside_links) > 3 else ""))
    if walk.special:
        log(f"skipped {len(walk.special)} image-named entr{'y' if len(walk.special) == 1 else 'ies'} that "
            f"{'is' if len(walk.special) == 1 else 'are'} not a regular file (FIFO, device, socket): "
            + ", ".join(str(p) for p in walk.special[:3]) + (" …" if len(walk.special) > 3 else ""))

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
    scan = FolderScan(root, class_names, skipped=skipped, special=walk.special, outside_links=walk.outside_links)
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
    return "/".join(sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES))


# --------------------------------------------------------------------------------------------------------------
# decoding


@dataclass(frozen=True)
class FileInfo:
    """What decoding one file found: its stored size and mode (before orientation and resizing) and a digest of
    its decoded pixels before the resize (equal digests: the same image, whatever the file format; a large JPEG
    that training decodes at reduced size is digested at that size, so copies of it still match)."""

    width: int
    height: int
    mode: str
    format: str
    animated: bool
    digest: str
    phash: int | None = None  # the 64-bit perceptual hash (data/images.py), where the check asked for it
    thumb: bytes | None = None  # a 16x16 grey copy, to confirm a near-duplicate its hash suggests


def pixel_digest(image: torch.Tensor) -> str:
    """blake2b of an oriented RGB uint8 image's shape and pixels."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(tuple(image.shape)).encode())
    digest.update(image.contiguous().numpy().tobytes())
    return digest.hexdigest()


class _DecodeFiles:
    """A map-style dataset for torch's DataLoader: position → (position, RGB image at ``size`` or None, problem,
    :class:`FileInfo` or None). ``size`` None keeps the stored size (the data check needs no pixels back)."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int] | None, max_pixels: int | None = None,
                 resize: int | None = None, interpolation: str = "bilinear", phash: bool = False):
        self.files = list(files)
        self.max_pixels = max_pixels
        self.phash = phash
        # ``resize`` (pretrained preprocessing): the shorter side to it, then the centre crop to ``size``
        self.target = ResizeTarget(size, resize, interpolation) if size else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, position: int) -> tuple[int, Any, str, FileInfo | None]:
        path, target = self.files[position], self.target
        try:
            image, header = decode_file(path, self.max_pixels, target)
        except DataError as error:
            return position, None, error.message, None
        info = FileInfo(header.width, header.height, header.mode, header.format, header.animated,
                        pixel_digest(image), perceptual_hash(image) if self.phash else None,
                        thumbnail(image) if self.phash else None)
        return position, (fit_to_target(image, header, target) if target else None), "", info


def _collate(batch: list[tuple[int, Any, str, Any]]) -> tuple[list[tuple[int, str, Any]], Any]:
    """``(position, problem, info)`` per file and one uint8 tensor of the batch's decoded images (None without any):
    a worker hands a batch back through shared memory, and one tensor costs one transfer where 64 small ones cost
    64."""
    import torch

    images = [image for _, image, _, _ in batch if image is not None]
    return [(position, problem, info) for position, _, problem, info in batch], \
        (torch.stack(images) if images else None)


def default_workers(count: int) -> int:
    """Decode in the main process for a handful of files (starting workers costs more), else up to 8 workers."""
    return 0 if count < 256 else max(1, min(8, os.cpu_count() or 1))


@dataclass
class Decoded:
    images: torch.Tensor  # uint8 N×3×H×W of the files that decoded
    kept: list[int]  # their positions in the input list
    failures: list[tuple[Path, str]]
    grey: bool  # every decoded image has equal R, G and B
    infos: list[FileInfo | None] = field(default_factory=list)  # per input position; None where it failed
    sums: ChannelSums | None = None  # keep=False: what the channel statistics need, images not kept


# values per chunk when summing: a float copy of a whole chunk of 1,024 images at 224² took 2.5 GB
STATS_CHUNK_VALUES = 2**22


@dataclass
class ChannelSums:
    """Per-channel sums of the uint8 pixel values and of their squares, exact in int64, and the pixel count.

    Exact integers make the statistics independent of how the images were split into chunks: the cache and a
    streamed split, which add different batches, give the same mean and std to the last bit."""

    total: torch.Tensor
    squares: torch.Tensor
    pixels: int = 0

    @classmethod
    def zeros(cls, channels: int) -> ChannelSums:
        import torch

        return cls(torch.zeros(channels, dtype=torch.int64), torch.zeros(channels, dtype=torch.int64))

    def add(self, images: torch.Tensor) -> None:
        """Add uint8 N×C×H×W images, a bounded chunk at a time (memory stays a few MB over the images)."""
        import torch

        if images.shape[0] == 0:
            return
        step = max(1, STATS_CHUNK_VALUES // images[0].numel())
        for start in range(0, images.shape[0], step):
            wide = images[start:start + step].to(torch.int32)
            self.total += wide.sum(dim=(0, 2, 3), dtype=torch.int64)
            self.squares += wide.mul_(wide).sum(dim=(0, 2, 3), dtype=torch.int64)
        self.pixels += images.shape[0] * images.shape[2] * images.shape[3]

    def stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std of the first ``channels`` channels in [0, 1] units (a flat channel's std is 1e-3, never 0)."""
        count = max(self.pixels, 1)
        mean = self.total[:channels].double() / (255.0 * count)
        second = self.squares[:channels].double() / (255.0**2 * count)
        std = (second - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
        return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def decode_files(files: Sequence[Path], size: tuple[int, int] | None, *, workers: int | None = None,
                 max_pixels: int | None = None, resize: int | None = None, interpolation: str = "bilinear",
                 keep: bool = True, phash: bool = False) -> Decoded:
    """Decode and resize ``files`` into one uint8 tensor, in DataLoader workers. Unreadable files are reported
    back, not raised: one broken file should not stop a training run. ``size`` None only inspects the files
    (``infos``, ``failures``; ``images`` is empty); ``keep=False`` measures the resized images (``sums``,
    ``grey``) without keeping them, for a split that streams."""
    import torch
    from torch.utils.data import DataLoader

    count = len(files)
    shape = size or (0, 0)
    keep = keep and size is not None
    needed = count * 3 * shape[0] * shape[1]
    budget, source = memory_budget()
    if keep and budget is not None and needed > budget:
        raise UsageError(f"{count:,} images at {shape[0]}x{shape[1]} need {size_text(needed)} in memory, more than "
                         f"the budget of {size_text(budget)} ({source})",
                         hint="pass a smaller --img-size or --limit (training streams with --cache auto or none)")
    workers = default_workers(count) if workers is None else workers
    images = torch.empty((count if keep else 0, 3, *shape), dtype=torch.uint8)
    sums = None if keep or size is None else ChannelSums.zeros(3)
    ok = torch.zeros(count, dtype=torch.bool)
    grey = True
    failures: list[tuple[Path, str]] = []
    infos: list[FileInfo | None] = [None] * count
    if count:
        batches = DataLoader(_DecodeFiles(files, size, max_pixels, resize, interpolation, phash), batch_size=64,
                             num_workers=workers,
                             collate_fn=_collate)
        for found, decoded in batches:
            positions = []
            for position, problem, info in found:
                if info is None:
                    failures.append((files[position], problem))
                    continue
                infos[position] = info
                ok[position] = True
                positions.append(position)
            if decoded is None:  # size None: only the files' infos were asked for
                continue
            if keep:
                images[positions] = decoded
            else:
                sums.add(decoded)
            grey = grey and bool(is_grey(decoded).all())
    kept = ok.nonzero().flatten()
    if keep and len(kept) < count:
        images = images[kept]
    return Decoded(images, kept.tolist(), failures, grey, infos, sums)


def _report_failures(failures: list[tuple[Path, str]], log: Log) -> None:
    if not failures:
        return
    log(f"could not read {plural(len(failures), 'image')}; left out:")
    for _, problem in failures[:_EXAMPLES]:
        log(f"  {problem}")
    if len(failures) > _EXAMPLES:
        log(f"  … and {len(failures) - _EXAMPLES} more")


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N×C×H×W in [0, 1] units."""
    sums = ChannelSums.zeros(images.shape[1])
    sums.add(images)
    return sums.stats(images.shape[1])


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
    train = scan.splits.get("train") or []  # a source may hold only test images (eval --data test shards)
    val = scan.splits.get("val")
    fraction = 0 if val is not None else (DEFAULT_VAL_SPLIT if val_split is None else val_split)
    train_index, val_index = split_positions(len(train), fraction, seed, limit)
    if val_index is not None:
        val = [train[i] for i in val_index.tolist()]
    if train_index is not None:
        train = [train[i] for i in train_index.tolist()]
    return FolderSplits(train, val or None, scan.splits.get("test") or None)


def load_items(items: list[tuple[Path, int]], classes: tuple[str, ...], size: tuple[int, int], *, source: str,
               workers: int | None = None, log: Log = lambda _: None, max_pixels: int | None = None,
               check: FolderCheck | None = None, split: str = "train", resize: int | None = None,
               interpolation: str = "bilinear", weights: dict[str, float] | None = None,
               multilabel: bool = False) -> tuple[ImageTensors, bool]:
    """Decode a split's files into :class:`ImageTensors` (RGB); also say whether every image was grey.
    ``check`` (data/check.py) collects what decoding found, for the data check's summary."""
    decoded = decode_files([path for path, _ in items], size, workers=workers, max_pixels=max_pixels, resize=resize,
                           interpolation=interpolation)
    if check is not None:
        check.add(split, items, decoded)
    _report_failures(decoded.failures, log)
    labels = label_index([items[i][1] for i in decoded.kept], len(classes), multilabel)
    paths = tuple(str(items[i][0]) for i in decoded.kept)
    return ImageTensors(decoded.images, labels, classes, source=source, paths=paths,
                        weights=_item_weights(paths, weights)), decoded.grey


def _item_weights(names: tuple[str, ...], weights: dict[str, float] | None) -> torch.Tensor | None:
    """Each image's loss weight (1 where the source gave none), or None when the source gave none at all."""
    import torch

    if not weights:
        return None
    return torch.tensor([weights.get(name, 1.0) for name in names], dtype=torch.float32)


def stream_items(items: list[tuple[Path, int]], classes: tuple[str, ...], size: tuple[int, int], *, source: str,
                 log: Log = lambda _: None, max_pixels: int | None = None, check: FolderCheck | None = None,
                 split: str = "train", resize: int | None = None, interpolation: str = "bilinear",
                 weights: dict[str, float] | None = None, multilabel: bool = False
                 ) -> tuple[StreamedImages, bool, ChannelSums]:
    """A split that streams (data/stream.py): one decoding pass finds the unreadable files, whether every image
    is grey and the channel sums, exactly as :func:`load_items` would, but keeps no pixels."""
    decoded = decode_files([path for path, _ in items], size, max_pixels=max_pixels, resize=resize,
                           interpolation=interpolation, keep=False)
    if check is not None:
        check.add(split, items, decoded)
    _report_failures(decoded.failures, log)
    labels = label_index([items[i][1] for i in decoded.kept], len(classes), multilabel)
    files = tuple(items[i][0] for i in decoded.kept)
    assert decoded.sums is not None
    return (StreamedImages(files, labels, classes, source, size, resize=resize, interpolation=interpolation,
                           max_pixels=max_pixels, workers=stream_workers(len(files)),
                           weights=_item_weights(tuple(str(f) for f in files), weights)),
            decoded.grey, decoded.sums)


def _to_grey(data: ImageTensors | StreamedImages) -> ImageTensors | StreamedImages:
    """Every image is grey: keep one of its three equal channels."""
    if getattr(data, "streamed", False):
        return data.as_grey()
    return replace(data, images=data.images[:, :1].contiguous())


def _channels(data: ImageTensors | StreamedImages) -> int:
    return data.channels if getattr(data, "streamed", False) else int(data.images.shape[1])


def prepare_folder(config: TrainConfig, model: ModelSpec, log: Log) -> PreparedData:
    """Training's view of ``config.data_dir`` (the folder dataset's ``DatasetSpec.prepare``).

    Records the absolute folder in ``config`` so the checkpoint (and eval) can find it again.
    """
    if not config.data_dir:
        raise UsageError("the folder dataset needs --data PATH (a folder with one sub-folder per class)")
    if config.dataset not in ("folder", "mnist"):  # mnist is only the option's default
        raise UsageError(f"--data and --dataset {config.dataset} contradict each other; pass one of them")
    root = data_root(config.data_dir)
    scan = scan_source(root, log=log)
    if scan.multilabel and getattr(config, "task", "auto") == "single":  # before any image is decoded
        task = label("task")
        raise UsageError(f"{root} gives some images several labels (multi-label data); {task} single needs one "
                         "label per image", hint=f"use {task} multilabel (or leave {task} out)")
    # What ran goes into the saved configuration (PreparedData.resolved): a folder with its own val/ holds
    # nothing out of train/.
    val_split = config.val_split
    if val_split is None:
        val_split = 0 if scan.splits.get("val") is not None else DEFAULT_VAL_SPLIT
    augment = config.augment if config.augment is not None else get_dataset_spec("folder").augment
    check_class_names(getattr(config, "class_weights", None), scan.classes)  # before any image is decoded
    chosen = choose_splits(scan, val_split=val_split, seed=config.seed, limit=config.limit)
    side = DEFAULT_IMAGE_SIZE if config.img_size is None else config.img_size
    # Decode straight to the size the model will see (a fixed-input model may ask for another one).
    size = resolve_preprocessing(model, (3, side, side), (0.0,) * 3, (1.0,) * 3, None).image_size
    # pretrained weights: their preprocessing; images are kept at the resize size, cropped per batch
    weights = imagenet_weights_for_config(config)
    img_size = config.img_size
    if weights is not None and img_size is None:  # small images upscaled, large ones at the weights' size
        img_size = finetune_image_size(_typical_side(chosen.train), weights.preprocessing.crop[0])
    weights_prep = None if weights is None else run_preprocessing(
        weights, 3, size, img_size=img_size, folder=True, grey_input=grey_input_mode(config))
    resize = None
    if weights_prep is not None:
        resize = weights_prep.resize
        size = (resize, resize)
    loaded: dict[str, ImageTensors | StreamedImages | None] = {}
    all_grey = True
    counts = {split: len(getattr(chosen, split) or ()) for split in ("train", "val", "test")}
    plan = plan_cache(getattr(config, "cache", None) or "auto", counts, 3 * size[0] * size[1],
                      f"{root} at {size[0]}x{size[1]}", stream_workers(counts["train"]))
    log(plan.reason)
    check = FolderCheck(scan)
    train_sums = None
    for split in ("train", "val", "test"):
        items = getattr(chosen, split)
        if not items:
            loaded[split] = None
            continue
        reading = dict(source=str(root / split), log=log, max_pixels=getattr(config, "max_pixels", None),
                       check=check, split=split, resize=resize,
                       interpolation=weights_prep.interpolation if weights_prep else "bilinear",
                       weights=scan.weights if split == "train" else None, multilabel=scan.multilabel)
        if split == "train" and plan.stream:
            data, grey, train_sums = stream_items(items, scan.classes, size, **reading)
        else:
            data, grey = load_items(items, scan.classes, size, **reading)
        all_grey = all_grey and grey
        loaded[split] = data
    train = loaded["train"]
    if train is None or len(train) == 0:
        raise DataError(f"none of the training images in {root} could be read")
    report = check.report()
    log(report.summary_line())
    if report.empty_classes:
        names = ", ".join(report.empty_classes[:5]) + (" …" if len(report.empty_classes) > 5 else "")
        raise DataError(f"class(es) {names}: none of their training images could be read (see above)",
                        hint=f"fix or remove the files (`cnnctl check {root}` lists them)")
    per_class = images_per_class(train.labels, len(scan.classes))
    missing = [name for index, name in enumerate(scan.classes) if int(per_class[index]) == 0]
    if missing:
        log(f"warning: no training image of class(es) {', '.join(missing[:5])} (unreadable files or --limit); "
            "the model cannot learn them")
    if all_grey and not (weights_prep is not None and grey_input_mode(config) == "replicate"):
        loaded = {split: _to_grey(data) if data is not None else None for split, data in loaded.items()}
        train = loaded["train"]
    assert train is not None
    channels = _channels(train)
    if weights is None:
        mean, std = train_sums.stats(channels) if train_sums is not None else _channel_stats(train.images)
        preprocessing = resolve_preprocessing(model, (channels, *size), mean, std, None)
    else:  # the weights' own normalisation (unless --normalize data), resize and crop
        preprocessing = run_preprocessing(weights, channels, size, img_size=img_size, folder=True,
                                          grey_input=grey_input_mode(config))
        if getattr(config, "normalize", None) == "data":
            stats = train_sums.stats(channels) if train_sums is not None else _channel_stats(train.images)
            preprocessing = with_data_statistics(preprocessing, *stats)
    log(f"{root}: {len(scan.classes)} classes, {len(train):,} training images"
        + (f", {len(loaded['val']):,} validation" if loaded["val"] is not None else "")
        + (f", {len(loaded['test']):,} test" if loaded["test"] is not None else "")
        + f", {'grey' if channels == 1 else 'RGB'} at {size[0]}x{size[1]}"
        + (f" (centre-cropped to {preprocessing.image_size[0]}x{preprocessing.image_size[1]})"
           if preprocessing.resize else ""))
    return PreparedData(train, loaded["val"], loaded["test"], scan.classes, preprocessing, "folder",
                        resolved={"data_dir": str(root), "dataset": "folder", "val_split": val_split,
                                  "augment": augment, "img_size": img_size})


def _typical_side(items: Any, sample: int = 16) -> int | None:
    """The median shorter side of up to ``sample`` training images, read from their headers (no decoding)."""
    import io

    from PIL import Image

    sides = []
    for path, _ in list(items or [])[:: max(1, len(items or []) // sample)][:sample]:
        try:
            with Image.open(io.BytesIO(read_item_bytes(path))) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError, DataError):
            continue  # reported when the file is decoded
    return sorted(sides)[len(sides) // 2] if sides else None


def load_folder_eval_split(meta: Any, split: str = "test", *, data_dir: str | None = None,
                           log: Log = lambda _: None, max_items: int | None = None, **_: Any) -> ImageTensors:
    """The folder dataset's ``DatasetSpec.eval_split``: the images eval should use, labelled by the checkpoint's
    class names: ``test/``, or the ``val``/``train`` split rebuilt exactly as training chose it. Without
    ``test/``, the folder the checkpoint was trained on is evaluated on the validation images held out in
    training, any other folder (``--data``) on all its images. ``max_items`` decodes only the split's first
    files (export verification). ``split`` is the split used (``all``: every image of a folder without
    ``test/`` that training never saw).
    """
    folder = data_dir or meta.data_dir
    if not folder:
        raise UsageError("the checkpoint does not say which folder it was trained on", hint="pass --data PATH")
    root = Path(folder).expanduser()
    if not root.exists() and not _is_glob(folder):
        raise UsageError(f"the data this checkpoint was trained on, {root}, does not exist",
                         hint="pass --data PATH to evaluate on another copy")
    if split not in ("test", "val", "train"):
        raise UsageError(f"unknown split {split!r}; choose test, val or train")
    config = meta.config or {}
    scan = scan_source(root, classes=meta.classes, log=log, min_classes=1)
    trained_here = bool(meta.data_dir) and data_root(meta.data_dir) == data_root(folder)
    if meta.dataset == "folder":  # rebuild the run's own splits (also in another copy of its folder)
        chosen = choose_splits(scan, val_split=config.get("val_split"), seed=int(config.get("seed", 0)),
                               limit=config.get("limit"))
    else:  # trained on a built-in dataset: its --val-split and --limit say nothing about this folder
        chosen = choose_splits(scan, val_split=None, seed=0, limit=None)
    items = getattr(chosen, split)
    if split == "test" and items is None:
        if trained_here:
            log(f"{root} has no test/ folder: evaluating on the validation images held out in training")
            split, items = "val", chosen.val
        else:  # a folder training never saw: all of it is new
            items = (scan.splits.get("train") or []) + (scan.splits.get("val") or [])
            split = "all"
            log(f"{root} has no test/ folder: evaluating on all {len(items):,} of its images")
    if not items:
        raise UsageError(f"{root} has no {split} images", hint="use --split train, or add a val/ or test/ folder")
    if max_items is not None:
        items = items[:max_items]
    data, _ = load_items(items, tuple(meta.classes), tuple(meta.preprocessing.image_size),
                         source=str(root / split), log=log, max_pixels=config.get("max_pixels"),
                         resize=meta.preprocessing.resize, interpolation=meta.preprocessing.interpolation,
                         multilabel=scan.multilabel)
    if len(data) == 0:
        raise DataError(f"none of the {split} images in {root} could be read")
    images = to_grey(data.images) if meta.preprocessing.channels == 1 else data.images
    return ImageTensors(images, data.labels, data.classes, data.source, data.paths, split)


def data_root(data: str | Path) -> Path:
    """``--data`` as an absolute path (a shard glob keeps its pattern; its folder is resolved)."""
    path = Path(data).expanduser()
    if _is_glob(str(data)):
        return path.parent.resolve() / path.name
    return path.resolve()


def _is_glob(text: str | Path) -> bool:
    return any(ch in str(text) for ch in "*?[")


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


SOURCE = register_source(Source(
    name="folder", description="a folder with one sub-folder per class (or train/, val/, test/ holding them)",
    claims=lambda path: path.is_dir(), scan=scan_folder, priority=90))


def check_folder(root: str | Path, *, max_pixels: int | None = None, workers: int | None = None,
                 log: Log = lambda _: None, near_distance: int = NEAR_DISTANCE) -> CheckReport:
    """Scan and decode every image of a dataset (any source: a folder's ``train/``, ``val/``, ``test/`` folders, a
    label file's split column, as they are; nothing is held out) and report on it."""
    scan = scan_source(root, log=log, min_classes=1)
    check = FolderCheck(scan, near_distance=near_distance)
    for split in SPLIT_ORDER:
        items = scan.splits.get(split)
        if items:
            check.add(split, items, decode_files([path for path, _ in items], None, workers=workers,
                                                 max_pixels=max_pixels, phash=near_distance >= 0))
    return check.report()
