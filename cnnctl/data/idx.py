"""IDX files (the MNIST family's format): a big-endian header, then raw uint8 data, usually gzip-compressed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.base import ImageTensors
from cnnctl.data.download import RemoteFile
from cnnctl.errors import DataError
from cnnctl.registry import DatasetSpec, register_dataset

if TYPE_CHECKING:
    from cnnctl.data.base import ImageTensors

_UBYTE = 0x08
_MAX_DIMS = 4
_MAX_BYTES = 2**31  # no IDX file we read is anywhere near 2 GiB; a header claiming more is corrupt


def parse_idx(data: bytes, *, source: str = "<bytes>") -> Any:
    """Parse IDX bytes into a numpy uint8 array, checking the header against the payload size."""
    import numpy as np

    if len(data) < 4:
        raise DataError(f"{source}: too short to be an IDX file ({len(data)} bytes)")
    zero1, zero2, dtype, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number {data[:4].hex()})")
    if dtype != _UBYTE:
        raise DataError(f"{source}: unsupported IDX data type 0x{dtype:02x} (only unsigned bytes are used)")
    if not 1 <= ndim <= _MAX_DIMS:
        raise DataError(f"{source}: unsupported IDX rank {ndim}")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise DataError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header_end])
    expected = 1
    for dim in shape:
        expected *= dim
    if expected > _MAX_BYTES:
        raise DataError(f"{source}: header claims {expected} bytes, more than any IDX file should hold")
    payload = len(data) - header_end
    if payload != expected:
        raise DataError(
            f"{source}: header says {'x'.join(map(str, shape))} = {expected} bytes but the file holds {payload}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape)


def read_idx(path: Path) -> Any:
    """Read a (possibly gzipped) IDX file."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError as error:
        raise DataError(f"{path} is missing", hint="run `cnnctl download` for this dataset") from error
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path} is corrupt or truncated ({error})", hint="delete it and download again") from error
    return parse_idx(raw, source=str(path))


def load_idx_pair(images_path: Path, labels_path: Path, classes: tuple[str, ...]) -> ImageTensors:
    """Images (N×H×W) and labels (N) → an :class:`ImageTensors` with a channel axis."""
    import torch

    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected N×H×W images, found shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a vector of labels, found shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= len(classes):
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range for {len(classes)} classes")
    image_tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    label_tensor = torch.from_numpy(labels.astype("int64"))
    return ImageTensors(image_tensor, label_tensor, classes, source=str(images_path.parent))


def _idx_loader(prefixes: dict[str, str], classes: tuple[str, ...]) -> Any:
    def load(directory: Path, split: str) -> ImageTensors:
        prefix = prefixes[split]
        return load_idx_pair(
            directory / f"{prefix}-images-idx3-ubyte.gz", directory / f"{prefix}-labels-idx1-ubyte.gz", classes
        )

    return load


_MNIST_SPLITS = {"train": "train", "test": "t10k"}

MNIST = register_dataset(
    DatasetSpec(
        name="mnist",
        description="handwritten digits (LeCun, Cortes, Burges)",
        classes=tuple(str(digit) for digit in range(10)),
        image_shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        train_size=60_000,
        test_size=10_000,
        loader=_idx_loader(_MNIST_SPLITS, tuple(str(digit) for digit in range(10))),
        files=(
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                content_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                content_md5="6bbc9ace898e44ae57da46a324031adb",
                file_md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
                size=9_912_422,
                content_size=47_040_016,
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz",
                content_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                content_md5="a25bea736e30d166cdddb491f175f624",
                file_md5="d53e105ee54ea40749a09fcbcd1e9432",
                size=28_881,
                content_size=60_008,
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz",
                content_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                content_md5="2646ac647ad5339dbf082846283269ea",
                file_md5="9fb629c4189551a2d022fa330f9573f3",
                size=1_648_877,
                content_size=7_840_016,
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz",
                content_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                content_md5="27ae3e4e09519cfbb04c329615203637",
                file_md5="ec29112dd5afa0611ce80d1b7f02629c",
                size=4_542,
                content_size=10_008,
            ),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        default_val_split=5000,
    )
)


def _idx_files(md5s: tuple[str, str, str, str]) -> tuple[RemoteFile, ...]:
    """The four MNIST-named files, checked by the md5 of the published .gz (as torchvision lists them)."""
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    content_sizes = (16 + 60_000 * 28 * 28, 8 + 60_000, 16 + 10_000 * 28 * 28, 8 + 10_000)  # IDX header + data
    return tuple(RemoteFile(name, file_md5=md5, content_size=size) for name, md5, size in zip(names, md5s,
                                                                                           content_sizes))


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")

FASHION_MNIST = register_dataset(
    DatasetSpec(
        name="fashion-mnist",
        description="Zalando clothing images, a harder MNIST (Xiao et al.)",
        classes=FASHION_MNIST_CLASSES,
        image_shape=(1, 28, 28),
        mean=(0.2860,),
        std=(0.3530,),
        train_size=60_000,
        test_size=10_000,
        loader=_idx_loader(_MNIST_SPLITS, FASHION_MNIST_CLASSES),
        files=_idx_files(("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                          "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        default_val_split=5000,
    )
)

KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")

KMNIST = register_dataset(
    DatasetSpec(
        name="kmnist",
        description="Kuzushiji-MNIST: cursive hiragana (Clanuwat et al.)",
        classes=KMNIST_CLASSES,
        image_shape=(1, 28, 28),
        mean=(0.1918,),
        std=(0.3483,),
        train_size=60_000,
        test_size=10_000,
        loader=_idx_loader(_MNIST_SPLITS, KMNIST_CLASSES),
        files=_idx_files(("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
                          "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134")),
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        default_val_split=5000,
    )
)
