"""``--data shards/`` or ``--data 'shards/train-*.tar'``: WebDataset-style tar shards. Each sample is the members
sharing a key (the member's name up to the first dot of its file name): an image (``key.png``, ``key.jpg``, ...)
and its label, ``key.cls`` (a class name or number), ``key.txt`` (a name; ``a|b`` for several) or ``key.json``
(``{"label": ...}``, optionally ``"split"`` and ``"weight"``). A shard whose name begins with ``train``, ``val``
(``valid``, ``validation``) or ``test`` holds that split; other shards are training images.

Shards are read with the standard library's ``tarfile``, once, for the member offsets (headers only); an image is
then read by seeking to its offset. With random access, shards go through the same path as image files: decoded
into memory when they fit the memory budget, else streamed (data/stream.py) in the loader's own order, so a
streamed run draws the batches the in-memory run draws and resumes exactly. (The ``webdataset`` library reads a
shard from start to end with a shuffle buffer: a different order per reader, and no resume inside an epoch.)

Every member must be an image or a label: anything else (another extension, a link, a device, an image-named
member that is not an image) is an error naming the shard and the member, before training starts. Compressed
shards (``.tar.gz``) cannot be read at an offset and are refused.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl import filekind
from cnnctl.data.items import (
    SPLIT_NAMES,
    Item,
    Log,
    Source,
    SourceScan,
    register_source,
    row_split,
    row_target,
    row_weight,
    scan_items,
)
from cnnctl.errors import DataError, UsageError

IMAGE_EXTENSIONS = frozenset(suffix.lstrip(".") for suffix in filekind.IMAGE_SUFFIXES)
LABEL_EXTENSIONS = ("cls", "txt", "json")
MAX_LABEL_BYTES = 64 * 2**10


@dataclass(frozen=True)
class ShardMember:
    """An image inside a tar shard, read by seeking to its data (no extraction)."""

    shard: str
    offset: int
    size: int
    name: str

    def read(self, max_bytes: int) -> bytes:
        if self.size > max_bytes:
            raise DataError(f"{self}: larger than {max_bytes / 2**20:.0f} MiB; not read")
        try:
            with open(self.shard, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.size)
        except OSError as error:
            raise DataError(f"{self}: not readable ({error.strerror or error})") from error
        if len(data) != self.size:
            raise DataError(f"{self}: the shard ends inside this member (truncated)")
        return data

    def __str__(self) -> str:
        return f"{self.shard}:{self.name}"


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def shard_files(path: Path) -> tuple[Path, list[Path]]:
    """(root, shards) of ``--data``: a .tar file, a folder of them, or a glob."""
    text = str(path)
    if _is_glob(text):
        root = Path(text).parent
        found = [Path(name) for name in sorted(glob.glob(text)) if name.lower().endswith(".tar")]
    elif path.is_dir():
        root, found = path, sorted(p for p in path.glob("*.tar") if not p.name.startswith("."))
    else:
        root, found = path.parent, [path]
    if not found:
        raise UsageError(f"{path}: no .tar shards found", hint="name the shards *.tar (uncompressed)")
    real_root = os.path.realpath(root)
    for shard in found:
        real = os.path.realpath(shard)
        if not real.startswith(real_root.rstrip(os.sep) + os.sep):
            raise DataError(f"{shard} is a symlink out of {root}; not read", hint="copy the shard into the folder")
        if not os.path.isfile(real):
            raise DataError(f"{shard}: not a regular file; not read", hint="remove it from the folder")
    return root, found


def claims(path: Path) -> bool:
    text = str(path)
    if _is_glob(text) and not path.exists():
        return any(name.lower().endswith(".tar") for name in glob.glob(text))
    if path.suffix.lower() in (".tar",) or text.lower().endswith((".tar.gz", ".tgz")):
        return True
    if not path.is_dir():
        return False
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    visible = [entry for entry in entries if not entry.name.startswith(".")]
    return any(entry.name.lower().endswith(".tar") for entry in visible) and not any(
        entry.is_dir() for entry in visible)


def shard_split(shard: Path) -> str | None:
    """The split a shard's name gives: ``train-000.tar`` → train, ``validation_1.tar`` → val; else None."""
    first = re.split(r"[-_.]", shard.name, maxsplit=1)[0].lower()
    return SPLIT_NAMES.get(first)


def _label(shard: Path, member: tarfile.TarInfo, handle: Any, where: str) -> dict[str, Any]:
    """The label fields a ``.cls``/``.txt``/``.json`` member holds."""
    if member.size > MAX_LABEL_BYTES:
        raise DataError(f"{where}: a label member of {member.size:,} bytes", hint="a label is a short text")
    handle.seek(member.offset_data)
    raw = handle.read(member.size)
    try:
        text = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: the label is not UTF-8 text", hint="write the label as text") from error
    if member.name.lower().endswith(".json"):
        try:
            value = json.loads(text)
        except ValueError as error:
            raise DataError(f"{where}: not JSON ({error})", hint='write {"label": NAME}') from error
        return dict(value) if isinstance(value, dict) else {"label": value}
    return {"label": text}


def index_shard(shard: Path, split: str | None) -> list[Item]:
    """The samples of one shard: the image members' offsets and their labels (headers and labels read only)."""
    if str(shard).lower().endswith((".tar.gz", ".tgz")):
        raise DataError(f"{shard}: a compressed shard cannot be read at an offset",
                        hint="decompress it (gunzip) into a .tar")
    images: dict[str, tuple[tarfile.TarInfo, int]] = {}
    labels: dict[str, dict[str, Any]] = {}
    where_label: dict[str, str] = {}
    try:
        with open(shard, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
            for number, member in enumerate(archive, start=1):
                where = f"{shard} member {number} ({member.name})"
                if member.isdir():
                    continue
                if not member.isfile():
                    raise DataError(f"{where}: a link or special file, not an image or a label; not read",
                                    hint="rebuild the shard with regular files only")
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base or base.startswith("."):
                    raise DataError(f"{where}: not an image or a label (no extension)",
                                    hint="name members KEY.png (or .jpg ...) and KEY.cls, KEY.txt or KEY.json")
                stem, extension = base.split(".", 1)
                key = member.name[: len(member.name) - len(base)] + stem
                extension = extension.lower()
                if extension in IMAGE_EXTENSIONS:
                    handle.seek(member.offset_data)
                    kind = filekind.sniff_bytes(handle.read(filekind.PREFIX_BYTES)[: member.size])
                    if kind != filekind.IMAGE:
                        described = filekind.describe(kind) if kind else "not an image"
                        raise DataError(f"{where}: {described}, not an image",
                                        hint="remove the member from the shard or replace it with the image")
                    if key in images:
                        raise DataError(f"{where}: a second image for key {key!r}", hint="one image per key")
                    images[key] = (member, number)
                elif extension in LABEL_EXTENSIONS:
                    labels[key] = _label(shard, member, handle, where)
                    where_label[key] = where
                else:
                    raise DataError(f"{where}: .{extension} is neither an image nor a label",
                                    hint="remove the member; a sample is KEY.png (.jpg ...) with KEY.cls, KEY.txt "
                                         "or KEY.json")
    except tarfile.TarError as error:
        raise DataError(f"{shard}: not a tar file ({error})", hint="write shards as uncompressed tar") from error
    except OSError as error:
        raise DataError(f"{shard}: not readable ({error.strerror or error})") from error
    items = []
    for key, (member, number) in images.items():
        where = f"{shard} member {number} ({member.name})"
        if key not in labels:
            raise DataError(f"{where}: no label member ({key}.cls, .txt or .json)",
                            hint="add the label or remove the image")
        fields = labels[key]
        if "label" not in fields:
            raise DataError(f"{where_label[key]}: no 'label' field", hint='write {"label": NAME}')
        image = ShardMember(str(shard), member.offset_data, member.size, member.name)
        items.append(Item(image, row_target(fields["label"], where), row_split(fields.get("split"), where) or split,
                          row_weight(fields.get("weight"), where), where, f"{shard.name}/{member.name}"))
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DataError(f"{where_label[orphans[0]]}: a label without an image",
                        hint="add the image or remove the label")
    return items


def scan_shards(path: Path, *, classes: Sequence[str] | None = None, log: Log = lambda _: None,
                min_classes: int = 2) -> SourceScan:
    root, shards = shard_files(path)
    items: list[Item] = []
    for shard in shards:
        items += index_shard(shard, shard_split(shard))
    log(f"{path}: {len(shards)} shard(s), {len(items):,} images")
    return scan_items(root, items, kind="shards", classes=classes, min_classes=min_classes, where=str(path))


SOURCE = register_source(Source(
    name="shards", description="tar shards (a .tar, a folder or glob of them: KEY.png + KEY.cls)",
    claims=claims, scan=scan_shards, priority=30))
