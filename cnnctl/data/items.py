"""One data shape under every source: a list of items, each an image (a file, or bytes inside a table or a shard),
its target (one label name, or several for multi-label data), and optionally its split and a per-image weight.

A *source* turns what ``--data`` points at into items: a class folder (data/folder.py), a label file
(data/source_csv.py, data/source_jsonl.py), an Arrow table (data/source_arrow.py: a Hugging Face ``datasets``
folder or a Parquet file), tar shards (data/source_shards.py). Each source is one module that registers itself
here with :func:`register_source`; :func:`scan_source` picks the one that claims the path. Everything after it
(check, decode, cache or stream, split, train, eval) works on the :class:`SourceScan` the items become.

Label files are checked row by row before any image is decoded, and every problem is one line naming the file,
the row and what to do. An image a label file names must stay inside the label file's folder: an absolute path,
``..`` leading out or a symlink leading out is refused, so nothing outside the dataset's root is ever read.
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cnnctl.errors import DataError, UsageError

Log = Callable[[str], None]
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LABEL_SEPARATOR = "|"  # a label column "cat|dog": two labels (multi-label data)
MAX_LABEL_FILE_BYTES = 512 * 2**20  # a label file is refused by its size before it is read
_SOURCE_MODULE_PREFIX = "source_"

Target = str | tuple[str, ...]


@dataclass(frozen=True)
class EmbeddedImage:
    """An image held as bytes inside a table (a Parquet row, a Hugging Face dataset row): ``name`` says where."""

    name: str
    data: bytes

    def read(self, max_bytes: int) -> bytes:
        if len(self.data) > max_bytes:
            raise DataError(f"{self.name}: larger than {max_bytes / 2**20:.0f} MiB; not read")
        return self.data

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Item:
    """One image of a dataset. ``image``: a file (``Path``) or an object with ``read(max_bytes) -> bytes``
    (:class:`EmbeddedImage`, a tar member); ``target``: a label name, or a tuple of names (multi-label);
    ``split``: train/val/test or None (then training holds validation out of the unsplit rows);
    ``weight``: the image's weight in the training loss (None: 1); ``where``: the row it came from, for messages;
    ``key``: the name items are ordered by (the path relative to the dataset's root)."""

    image: Any
    target: Target
    split: str | None = None
    weight: float | None = None
    where: str = ""
    key: str = ""

    @property
    def labels(self) -> tuple[str, ...]:
        return self.target if isinstance(self.target, tuple) else (self.target,)


@dataclass
class SourceScan:
    """What a source holds: class names and, per split, (image, label) pairs in a stable order. A label is a class
    index, or a tuple of them for multi-label data; ``weights`` maps an image (``str(image)``) to its loss
    weight where the source gave one."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)
    skipped: int = 0  # hidden files and files that are not images
    special: list[Path] = field(default_factory=list)  # image-named entries that are not regular files (FIFOs, ...)
    outside_links: list[Path] = field(default_factory=list)  # symlinked folders leading out of the data folder
    weights: dict[str, float] = field(default_factory=dict)
    kind: str = "folder"  # the source that read it
    multilabel: bool = False
    declared_splits: bool = False  # the source said which images are validation (a val/ folder, a split column)


@dataclass(frozen=True)
class Source:
    """A registered source: ``claims(path)`` says whether ``--data path`` is one of its datasets; ``scan(path,
    classes, log, min_classes)`` reads it. Sources are asked in ``priority`` order (lowest first)."""

    name: str
    description: str
    claims: Callable[[Path], bool]
    scan: Callable[..., SourceScan]
    priority: int = 50


_SOURCES: dict[str, Source] = {}
_loaded = False


def register_source(source: Source) -> Source:
    if source.name in _SOURCES:
        raise ValueError(f"source {source.name!r} registered twice")
    _SOURCES[source.name] = source
    return source


def _load_sources() -> None:
    """Import data/folder.py and every data/source_*.py, so that they register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module("cnnctl.data")
    importlib.import_module("cnnctl.data.folder")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith(_SOURCE_MODULE_PREFIX):
            importlib.import_module(f"cnnctl.data.{module.name}")


def sources() -> list[Source]:
    _load_sources()
    return sorted(_SOURCES.values(), key=lambda source: (source.priority, source.name))


def source_for(data: str | Path) -> Source:
    """The source that reads ``--data``: the first (by priority) that claims it."""
    path = Path(data).expanduser()
    for source in sources():
        if source.claims(path):
            return source
    if not path.exists() and not any(ch in str(data) for ch in "*?["):
        raise UsageError(f"{path} does not exist", hint="--data takes a folder with one sub-folder per class, a "
                                                         "labels.csv or .jsonl, a .parquet, or tar shards")
    kinds = "; ".join(source.description for source in sources())
    if path.is_file():
        raise UsageError(f"{path} is a file, not a folder, a label file (.csv, .jsonl), a table (.parquet) or tar "
                         "shards (.tar)", hint=f"--data takes {kinds}")
    raise UsageError(f"{path}: no data source reads this", hint=f"--data takes {kinds}")


def scan_source(data: str | Path, *, classes: Sequence[str] | None = None, log: Log = lambda _: None,
                min_classes: int = 2) -> SourceScan:
    """The items of whatever ``--data`` points at, labelled by class index (``classes``: the checkpoint's)."""
    return source_for(data).scan(Path(data).expanduser(), classes=classes, log=log, min_classes=min_classes)


# --------------------------------------------------------------------------------------------------------------
# from items to a scan


def scan_items(root: Path, items: Sequence[Item], *, kind: str, classes: Sequence[str] | None = None,
               min_classes: int = 2, where: str = "") -> SourceScan:
    """Label ``items`` by class index and put them in their splits, ordered by (label, key): the order a class
    folder gives, so the same images give the same run whatever order the rows were in."""
    where = where or str(root)
    multilabel = any(isinstance(item.target, tuple) for item in items)
    if not items:
        raise DataError(f"{where} lists no images", hint="add rows naming an image and its label")
    if classes is None:
        names = sorted({label for item in items for label in item.labels})
        if len(names) < min_classes:
            raise DataError(f"{where} has images of only one class ({names[0]!r}); a classifier needs at least two",
                            hint="label images of at least two classes")
        class_names = tuple(names)
    else:
        class_names = tuple(classes)
    index = {name: position for position, name in enumerate(class_names)}
    per_split: dict[str, list[tuple[Any, Any, str]]] = {}
    weights: dict[str, float] = {}
    for item in items:
        unknown = [label for label in item.labels if label not in index]
        if unknown:
            known = ", ".join(class_names[:10]) + (" …" if len(class_names) > 10 else "")
            raise DataError(f"{item.where}: label {unknown[0]!r} is not one of the classes ({known})",
                            hint="the labels must match those training used")
        # multi-label data: every label a tuple of class indices (an image with one label too)
        label: Any = tuple(sorted(index[name] for name in item.labels)) if multilabel else index[item.target]
        per_split.setdefault(item.split or "train", []).append((item.image, label, item.key))
        if item.weight is not None:
            weights[str(item.image)] = item.weight
    if "train" not in per_split and classes is None and min_classes > 1:
        raise DataError(f"{where} has no training images (every row names another split)",
                        hint="mark some rows train, or leave their split empty")

    def order(entry: tuple[Any, Any, str]) -> tuple[Any, ...]:
        label = entry[1] if isinstance(entry[1], tuple) else (entry[1],)
        return (label, PurePosixPath(entry[2]).parts)

    splits = {split: [(image, label) for image, label, _ in sorted(entries, key=order)]
              for split, entries in per_split.items()}
    declared = any(item.split == "val" for item in items)
    return SourceScan(root, class_names, splits, weights=weights, kind=kind, multilabel=multilabel,
                      declared_splits=declared)


# --------------------------------------------------------------------------------------------------------------
# checks shared by the label-file sources


def check_label_file(path: Path, what: str = "label file") -> int:
    """Refuse a label file that is not a regular file or is too large, by its size, before reading it."""
    try:
        info = path.stat()
    except OSError as error:
        raise UsageError(f"{path}: cannot read the {what} ({error.strerror or error})") from error
    if not path.is_file():
        raise UsageError(f"{path}: the {what} is not a regular file")
    if info.st_size > MAX_LABEL_FILE_BYTES:
        raise DataError(f"{path}: {info.st_size / 2**30:.1f} GiB, larger than the {MAX_LABEL_FILE_BYTES // 2**20} MiB "
                        f"a {what} may have; not read",
                        hint="split it, or store the images as tar shards (docs/data.md)")
    return info.st_size


@dataclass
class RowReader:
    """Turns the fields of one row of a label file into an :class:`Item`, checking each; remembers the paths seen
    so that an image listed twice with different labels is an error naming both rows."""

    label_file: Path
    root: str = ""  # real path of the label file's folder
    seen: dict[str, tuple[str, Target]] = field(default_factory=dict)  # real path → (row, target)
    duplicates: int = 0
    items: list[Item] = field(default_factory=list)
    _folders: dict[str, str] = field(default_factory=dict)  # folder → its real path

    def __post_init__(self) -> None:
        self.root = os.path.realpath(self.label_file.parent)

    def row(self, row: str, path: Any, label: Any, split: Any = None, weight: Any = None) -> None:
        where = f"{self.label_file} {row}"
        relative = _path_field(path, where)
        image, real = self.resolve(relative, where)
        target = row_target(label, where)
        item = Item(image, target, row_split(split, where), row_weight(weight, where), where, relative)
        earlier = self.seen.get(real)
        if earlier is not None:
            if earlier[1] != target:
                raise DataError(f"{where}: {relative} is listed twice with different labels ({earlier[0]}: "
                                f"{_show(earlier[1])}, {row}: {_show(target)})", hint="keep one of the two rows")
            self.duplicates += 1
            return
        self.seen[real] = (row, target)
        self.items.append(item)

    def confine(self, relative: str, where: str) -> Path:
        """The image file a row names, refused unless it is a readable regular file inside the label file's
        folder (after every symlink is followed)."""
        return self.resolve(relative, where)[0]

    def resolve(self, relative: str, where: str) -> tuple[Path, str]:
        """:meth:`confine`'s file and its real path. The folders' real paths are looked up once each."""
        if os.path.isabs(relative) or relative.startswith("~"):
            raise DataError(f"{where}: {relative} is an absolute path; images must be inside {self.label_file.parent}",
                            hint="give the path relative to the label file's folder")
        candidate = Path(self.label_file.parent, relative)
        folder, name = os.path.split(candidate)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        real = os.path.join(real_folder, name)
        try:
            info = os.lstat(real)
            if stat.S_ISLNK(info.st_mode):
                real = os.path.realpath(real)
                info = os.stat(real)
        except OSError:
            info = None
        if not (real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)):
            how = "leads out of" if ".." in PurePosixPath(relative.replace("\\", "/")).parts else "is a symlink out of"
            raise DataError(f"{where}: {relative} {how} {self.label_file.parent}; not read",
                            hint="copy the image into the label file's folder and give its path relative to it")
        if info is None:
            raise DataError(f"{where}: {relative} does not exist",
                            hint="fix the path (relative to the label file's folder) or remove the row")
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{where}: {relative} is not a regular file; not read", hint="remove the row")
        if not os.access(real, os.R_OK):
            raise DataError(f"{where}: {relative} is not readable (permission denied)",
                            hint="make the file readable or remove the row")
        return candidate, real

    def scan(self, *, kind: str, classes: Sequence[str] | None, log: Log, min_classes: int) -> SourceScan:
        if self.duplicates:
            log(f"{self.label_file}: {self.duplicates} row(s) repeat an image with the same label; each image "
                "is used once")
        return scan_items(self.label_file.parent, self.items, kind=kind, classes=classes, min_classes=min_classes,
                          where=str(self.label_file))


def _show(target: Target) -> str:
    return LABEL_SEPARATOR.join(target) if isinstance(target, tuple) else target


def _path_field(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the path is empty", hint="name the image file, or remove the row")
    return value.strip()


def row_target(value: Any, where: str) -> Target:
    """A label name; several (a list, or names joined by ``|``) make a multi-label target."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, list):
        parts = [str(part).strip() if part is not None else "" for part in value]
    elif isinstance(value, str):
        parts = [part.strip() for part in value.split(LABEL_SEPARATOR)] if value.strip() else [""]
    else:
        parts = [""]
    if not parts or any(not part for part in parts):
        raise DataError(f"{where}: the label is empty", hint="give every image a label, or remove the row")
    if isinstance(value, list) or len(parts) > 1:
        return tuple(sorted(set(parts)))
    return parts[0]


def row_split(value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    name = SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise DataError(f"{where}: split {value!r} is not train, val or test",
                        hint="use train, val or test, or leave it empty (validation is then held out of train)")
    return name


def row_weight(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = math.nan
    if not math.isfinite(weight) or weight < 0:
        raise DataError(f"{where}: weight {value!r} is not a number ≥ 0", hint="give a non-negative number, or "
                                                                              "leave it empty (weight 1)")
    return weight


def label_index(labels: Sequence[Any], num_classes: int, multilabel: bool) -> Any:
    """The label tensor of a split: int64 class indices, or float N×C multi-hot for multi-label data."""
    import torch

    if not multilabel:
        return torch.tensor(list(labels), dtype=torch.int64)
    hot = torch.zeros((len(labels), num_classes), dtype=torch.float32)
    for row, label in enumerate(labels):
        hot[row, list(label if isinstance(label, tuple) else (label,))] = 1.0
    return hot
