"""Writers for tiny datasets in the real on-disk formats: CIFAR python-pickle tarballs, SVHN .mat files, IDX .gz
files and folders of image files. The images are learnable (class k has its own bright patch) but tiny."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from cnnctl import registry
from cnnctl.data.download import RemoteFile
from cnnctl.registry import DatasetSpec

UNREACHABLE = ("http://127.0.0.1:9/unreachable/",)


# --------------------------------------------------------------------------------------------------------------
# images


def patch_images(labels: np.ndarray, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """N×C×size×size uint8: noise plus a bright patch whose position and channel depend on the label."""
    rng = np.random.default_rng(seed)
    count = len(labels)
    images = rng.integers(0, 70, (count, channels, size, size)).astype(np.uint8)
    cell = size // 4
    for index, label in enumerate(labels):
        label = int(label)
        row, col = (label // 4) % 4 * cell, label % 4 * cell
        channel = (label // 16) % channels
        images[index, channel, row:row + cell, col:col + cell] = 255
    return images


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# CIFAR: python 2 pickles in a tarball


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles the way Python 2's cPickle wrote the official CIFAR batches: protocol 2, byte strings as Python 2
    ``str`` (BINSTRING, not Python 3's ``_codecs.encode`` call) and numpy's reconstructor under its 1.x name."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        size = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else pickle.BINSTRING + struct.pack("<i", size)
        self.write(header + obj)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = {"numpy._core.multiarray": "numpy.core.multiarray"}.get(obj.__module__, obj.__module__)
        self.write(pickle.GLOBAL + module.encode() + b"\n" + (name or obj.__qualname__).encode() + b"\n")
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[type] = save_global


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_batch(images: np.ndarray, labels: dict[bytes, np.ndarray], name: bytes = b"batch") -> bytes:
    """A batch dict as in the official files: data N×3072 uint8, list labels, filenames, batch_label."""
    entry: dict[bytes, object] = {b"batch_label": name, b"data": images.reshape(len(images), -1),
                                  b"filenames": [b"img_%d.png" % i for i in range(len(images))]}
    entry.update({key: [int(v) for v in values] for key, values in labels.items()})
    return py2_pickle(entry)


def tar_bytes(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None, mode: str = "w:gz") -> bytes:
    """A tar archive (gzip-compressed by default) of regular files, plus ``extra`` members as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return buffer.getvalue()


@dataclasses.dataclass
class Written:
    """What a writer put on disk: the files (name → bytes) and the arrays they hold, per split."""

    files: dict[str, bytes]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    coarse: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def write_cifar10(mirror: Path, per_batch: int = 40, test: int = 100) -> Written:
    rng = np.random.default_rng(10)
    members: dict[str, bytes] = {}
    train_images, train_labels = [], []
    for index in range(1, 6):
        labels = rng.integers(0, 10, per_batch)
        images = patch_images(labels, seed=index)
        members[f"cifar-10-batches-py/data_batch_{index}"] = cifar_batch(images, {b"labels": labels})
        train_images.append(images)
        train_labels.append(labels)
    test_labels = rng.integers(0, 10, test)
    test_images = patch_images(test_labels, seed=99)
    members["cifar-10-batches-py/test_batch"] = cifar_batch(test_images, {b"labels": test_labels})
    members["cifar-10-batches-py/batches.meta"] = py2_pickle({b"label_names": [b"airplane"] * 10})
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    archive = tar_bytes(members)
    mirror.mkdir(parents=True, exist_ok=True)
    (mirror / "cifar-10-python.tar.gz").write_bytes(archive)
    return Written({"cifar-10-python.tar.gz": archive},
                   {"train": np.concatenate(train_images), "test": test_images},
                   {"train": np.concatenate(train_labels), "test": test_labels})


def write_cifar100(mirror: Path, train: int = 200, test: int = 100) -> Written:
    rng = np.random.default_rng(100)
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    members: dict[str, bytes] = {}
    for split, count in (("train", train), ("test", test)):
        fine = rng.integers(0, 100, count)
        coarse = rng.integers(0, 20, count)
        images = patch_images(fine, seed=count)
        members[f"cifar-100-python/{split}"] = cifar_batch(images, {b"fine_labels": fine, b"coarse_labels": coarse})
        arrays[split] = (images, fine, coarse)
    members["cifar-100-python/meta"] = py2_pickle({b"fine_label_names": [b"x"] * 100,
                                                   b"coarse_label_names": [b"y"] * 20})
    archive = tar_bytes(members)
    mirror.mkdir(parents=True, exist_ok=True)
    (mirror / "cifar-100-python.tar.gz").write_bytes(archive)
    return Written({"cifar-100-python.tar.gz": archive}, {k: v[0] for k, v in arrays.items()},
                   {k: v[1] for k, v in arrays.items()}, {k: v[2] for k, v in arrays.items()})


# --------------------------------------------------------------------------------------------------------------
# SVHN: MATLAB files


def write_svhn(mirror: Path, train: int = 200, test: int = 100) -> Written:
    from scipy.io import savemat

    rng = np.random.default_rng(7)
    mirror.mkdir(parents=True, exist_ok=True)
    files, images, labels = {}, {}, {}
    for split, count in (("train", train), ("test", test)):
        digits = rng.integers(0, 10, count)
        nchw = patch_images(digits, seed=count + 1)
        mat_labels = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)  # SVHN writes 0 as 10
        buffer = io.BytesIO()
        savemat(buffer, {"X": nchw.transpose(2, 3, 1, 0), "y": mat_labels})  # H×W×C×N, like the official files
        name = f"{split}_32x32.mat"
        files[name] = buffer.getvalue()
        (mirror / name).write_bytes(files[name])
        images[split], labels[split] = nchw, digits
    return Written(files, images, labels)


# --------------------------------------------------------------------------------------------------------------
# IDX (Fashion-MNIST, KMNIST)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(mirror: Path, train: int = 200, test: int = 100) -> Written:
    rng = np.random.default_rng(28)
    mirror.mkdir(parents=True, exist_ok=True)
    files, images, labels = {}, {}, {}
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        digits = rng.integers(0, 10, count).astype(np.uint8)
        pictures = patch_images(digits, size=28, channels=1, seed=count)[:, 0]
        for kind, array in (("images-idx3", pictures), ("labels-idx1", digits)):
            name = f"{prefix}-{kind}-ubyte.gz"
            files[name] = gzip.compress(idx_bytes(array), mtime=0)
            (mirror / name).write_bytes(files[name])
        images[split], labels[split] = pictures[:, None], digits
    return Written(files, images, labels)


# --------------------------------------------------------------------------------------------------------------


def register_tiny(real: DatasetSpec, name: str, files: dict[str, bytes], storage: str | None = None
                  ) -> DatasetSpec:
    """A copy of ``real`` (same loader, classes, metadata) whose files are the tiny ones, checked by md5."""
    registry.datasets()
    remote = tuple(RemoteFile(file.name, file_md5=md5(files[file.name])) for file in real.files)
    spec = dataclasses.replace(real, name=name, files=remote, mirrors=UNREACHABLE, train_size=0, test_size=0,
                               default_val_split=20, storage=storage)
    registry.register_dataset(spec)
    return spec


def write_image_folder(root: Path, classes: tuple[str, ...], per_class: int, *, size: int = 24,
                       suffix: str = ".png", grey: bool = False, seed: int = 0) -> dict[str, list[Path]]:
    """One sub-folder per class; class k's images are dominated by colour k (or brightness k when grey), with a
    random bright square, noise and a random size between ``size`` and 1.5×``size``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 230], [200, 200, 40], [180, 60, 200]])
    written: dict[str, list[Path]] = {}
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for number in range(per_class):
            height, width = (int(v) for v in rng.integers(size, size * 3 // 2 + 1, 2))
            noise = rng.integers(0, 60, (height, width, 1 if grey else 3))
            if grey:
                base = np.full((height, width, 1), 40 + 80 * index)
            else:
                base = np.broadcast_to(palette[index % len(palette)], (height, width, 3)) * 0.6
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            pixels[top:top + height // 3, left:left + width // 3] = 255
            path = folder / f"{name}_{number:03d}{suffix}"
            Image.fromarray(pixels[:, :, 0] if grey else pixels).save(path)
            written[name].append(path)
    return written


def write_label_files(root: Path) -> list[dict[str, str]]:
    """Beside a class folder ``root/SPLIT/CLASS/*.png``: ``labels.csv``, ``labels.jsonl`` and ``digits.parquet``
    (image bytes, label, split) naming the same images, rows in reverse order (the order of the rows must not
    matter). Returns the rows."""
    import csv
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))[::-1]
    rows = [{"path": name, "label": name.split("/")[1], "split": name.split("/")[0]} for name in files]
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    images = [{"bytes": (root / row["path"]).read_bytes(), "path": row["path"]} for row in rows]
    pq.write_table(pa.table({"image": images, "label": [row["label"] for row in rows],
                             "split": [row["split"] for row in rows]}), root / "digits.parquet")
    return rows
