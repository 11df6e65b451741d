"""Fixtures that write tiny datasets in the real on-disk formats, so nothing is downloaded."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cnnctl import registry
from cnnctl.data.download import RemoteFile
from cnnctl.registry import DatasetSpec

DIGIT_CLASSES = tuple(str(d) for d in range(10))


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX format (magic 0x0000 08 ndim, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_digits(count: int, seed: int, size: int = 28, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 'digits': class k is a bright 6x6 square at one of 10 positions, plus noise and jitter."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count).astype(np.uint8)
    images = rng.integers(0, 60, (count, size, size)).astype(np.uint8)
    for index, label in enumerate(labels):
        row = 3 + (int(label) // 5) * 13 + int(rng.integers(-1, 2))
        col = 2 + (int(label) % 5) * 5 + int(rng.integers(-1, 2))
        images[index, row:row + 6, col:col + 6] = 255
    return images, labels


def write_idx_mirror(directory: Path, train_count: int = 1200, test_count: int = 300) -> dict[str, bytes]:
    """Write the four MNIST-named .gz files of a synthetic dataset; return their decompressed contents."""
    directory.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = synthetic_digits(train_count, seed=1)
    test_images, test_labels = synthetic_digits(test_count, seed=2)
    contents = {
        "train-images-idx3-ubyte.gz": idx_bytes(train_images),
        "train-labels-idx1-ubyte.gz": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte.gz": idx_bytes(test_images),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(test_labels),
    }
    for name, content in contents.items():
        (directory / name).write_bytes(gzip.compress(content, mtime=0))
    return contents


@pytest.fixture(autouse=True, scope="session")
def own_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tests' own ``~/.cache``: what earlier runs cached on this machine (the measured memory format) must
    not decide a test, and tests must not fill the user's cache."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def digits_mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    directory = tmp_path_factory.mktemp("mirror")
    return directory, write_idx_mirror(directory)


def tiny_digits_spec(contents: dict[str, bytes]) -> DatasetSpec:
    """``tinydigits``: the files of :func:`write_idx_mirror` (found through CNNCTL_MIRROR), read as MNIST."""
    from cnnctl.data.idx import MNIST

    files = tuple(
        RemoteFile(name, content_sha256=hashlib.sha256(content).hexdigest()) for name, content in contents.items()
    )
    return DatasetSpec(
        name="tinydigits", description="synthetic digits for tests", classes=DIGIT_CLASSES, image_shape=(1, 28, 28),
        mean=(0.13,), std=(0.31,), train_size=1200, test_size=300, loader=MNIST.loader, files=files,
        mirrors=("http://127.0.0.1:9/unreachable/",), default_val_split=200,
    )


@pytest.fixture()
def tiny_digits(digits_mirror: tuple[Path, dict[str, bytes]], tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[DatasetSpec]:
    """A registered dataset ``tinydigits`` in the IDX format (like MNIST), served from a local mirror folder,
    with a fresh, empty data root per test."""
    mirror, contents = digits_mirror
    registry.datasets()  # make sure the real ones are loaded first
    spec = tiny_digits_spec(contents)
    registry.register_dataset(spec)
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CNNCTL_MIRROR", str(mirror))
    yield spec
    registry._DATASETS.pop("tinydigits", None)


# --- training engine (issue 5): a dataset small enough for dozens of training runs per test file ---
def _micro_loader(counts: dict[str, int]):
    import torch

    from cnnctl.data.base import ImageTensors

    def load(directory: Path, split: str) -> ImageTensors:
        seed = {"train": 11, "test": 12}[split]
        images, labels = synthetic_digits(counts[split], seed=seed, classes=4)
        return ImageTensors(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                            DIGIT_CLASSES[:4], source=f"micro {split}")

    return load


@pytest.fixture()
def micro_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatasetSpec]:
    """``microdigits``: 4 classes of synthetic 28x28 'digits', 96 train images (16 held out for validation) and
    32 test images, generated in memory (nothing to download)."""
    registry.datasets()
    spec = DatasetSpec(
        name="microdigits", description="tiny synthetic digits for training-engine tests", classes=DIGIT_CLASSES[:4],
        image_shape=(1, 28, 28), mean=(0.13,), std=(0.31,), train_size=96, test_size=32,
        loader=_micro_loader({"train": 96, "test": 32}), default_val_split=16,
    )
    registry.register_dataset(spec)
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "data"))
    yield spec
    registry._DATASETS.pop("microdigits", None)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of small models: several threads only add overhead on tiny batches."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any attempt to open a network connection is recorded and fails."""
    import socket

    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError(f"a network connection was opened: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


# --- real servers for the scale-out tests (tests/services.py): started once per session, when first needed ---
@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A PostgreSQL server on 127.0.0.1 (a throw-away cluster); a server that cannot start fails the test."""
    from services import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_tracking() -> Iterator[object]:
    """An ``mlflow server`` on 127.0.0.1 with its own SQLite store and served artifacts."""
    from services import mlflow_server

    with mlflow_server() as server:
        yield server
