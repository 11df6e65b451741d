"""Property-based tests: random and truncated bytes fed to every parser give valid data or cnnctl's own error
type — never another exception, a hang or a huge allocation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnctl import checkpoint
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.data.base import Preprocessing
from cnnctl.data.idx import parse_idx, read_idx
from cnnctl.errors import CnnctlError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=300))
def test_idx_parser_on_random_bytes(data: bytes) -> None:
    try:
        array = parse_idx(data)
    except CnnctlError:
        return
    assert array.dtype == np.uint8 and array.size == len(data) - 4 - 4 * array.ndim


@FUZZ
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_idx_parser_on_truncated_and_corrupted_files(cut: int, flip: int) -> None:
    good = idx_bytes(np.arange(3 * 5 * 5, dtype=np.uint8).reshape(3, 5, 5))
    damaged = bytearray(good[:cut] if cut < len(good) else good)
    if damaged:
        damaged[flip % len(damaged)] ^= 0xFF
    try:
        parse_idx(bytes(damaged))
    except CnnctlError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_gzip_idx_file_on_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("gz") / "x-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + data)
    try:
        read_idx(path)
    except CnnctlError:
        pass


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from cnnctl.models import build_model

    path = tmp_path_factory.mktemp("ck") / "m.safetensors"
    meta = CheckpointMeta("simplecnn", {}, [str(i) for i in range(10)], Preprocessing(1, (28, 28)))
    checkpoint.save(path, build_model("simplecnn", num_classes=10, in_channels=1), meta)
    return path.read_bytes()


@FUZZ
@given(cut=st.integers(min_value=0, max_value=40_000), flip=st.integers(min_value=0, max_value=2**31))
def test_checkpoint_loader_on_truncated_and_flipped_files(tmp_path_factory: pytest.TempPathFactory,
                                                          good_checkpoint: bytes, cut: int, flip: int) -> None:
    data = bytearray(good_checkpoint[:cut])
    if data and flip % 3:
        data[flip % len(data)] ^= 1 << (flip % 8)
    path = tmp_path_factory.mktemp("bad") / "c.safetensors"
    path.write_bytes(bytes(data))
    try:
        model, meta = checkpoint.load(path)
    except CnnctlError:
        return
    assert meta.arch == "simplecnn"


@FUZZ
@given(st.binary(max_size=200))
def test_checkpoint_loader_on_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("rnd") / "r.safetensors"
    path.write_bytes(data)
    with pytest.raises(CnnctlError):
        checkpoint.load(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(["arch", "classes", "preprocessing", "format", "arch_args", "epoch"]),
                       json_values))
def test_checkpoint_metadata_on_random_json(document: dict) -> None:
    try:
        CheckpointMeta.from_json(json.dumps(document), source="x")
    except CnnctlError:
        pass


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF89a"]))
def test_image_decoder_on_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes, magic: bytes) -> None:
    from cnnctl.engine.predict import decode_image

    path = tmp_path_factory.mktemp("img") / "x.png"
    path.write_bytes(magic + data)
    try:
        image = decode_image(path, Preprocessing(1, (28, 28)))
    except CnnctlError:
        return
    assert image.shape == (1, 28, 28)


def test_truncated_png_is_a_data_error(tmp_path: Path) -> None:
    import torch
    from torchvision.io import encode_png

    from cnnctl.engine.predict import decode_image
    from cnnctl.errors import DataError

    png = encode_png(torch.randint(0, 255, (1, 28, 28), dtype=torch.uint8)).numpy().tobytes()
    path = tmp_path / "cut.png"
    path.write_bytes(png[: len(png) // 2])
    with pytest.raises(DataError, match="cut.png"):
        decode_image(path, Preprocessing(1, (28, 28)))


@pytest.fixture(scope="module")
def good_cifar_batch() -> bytes:
    from dataset_files import cifar_batch

    images = np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072)
    return cifar_batch(images, {b"labels": np.array([0, 3, 9, 1])})


def _read_cifar(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    from cnnctl.data.cifar import batch_arrays

    path = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    path.write_bytes(data)
    try:
        images, labels = batch_arrays(path, "labels", 10)
    except CnnctlError:
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32) and len(labels) == len(images)
    assert labels.min() >= 0 and labels.max() < 10


@pytest.mark.filterwarnings("ignore:dtype\\(\\)")  # damaged bytes give numpy odd dtype arguments
@FUZZ
@given(st.binary(max_size=400))
def test_cifar_batch_parser_on_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _read_cifar(tmp_path_factory, data)


@pytest.mark.filterwarnings("ignore:dtype\\(\\)")  # damaged bytes give numpy odd dtype arguments
@FUZZ
@given(st.data())
def test_cifar_batch_parser_on_truncated_and_flipped_batches(tmp_path_factory: pytest.TempPathFactory,
                                                             good_cifar_batch: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(good_cifar_batch)))
    damaged = bytearray(good_cifar_batch[:cut])
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    _read_cifar(tmp_path_factory, bytes(damaged))


@pytest.fixture(scope="module")
def good_svhn_mat() -> bytes:
    import io

    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {"X": np.zeros((32, 32, 3, 3), dtype=np.uint8), "y": np.array([[1], [10], [5]], np.uint8)})
    return buffer.getvalue()


@FUZZ
@given(st.data())
def test_svhn_mat_parser_on_truncated_flipped_and_random_files(tmp_path_factory: pytest.TempPathFactory,
                                                                good_svhn_mat: bytes, data: st.DataObject) -> None:
    from cnnctl.data.svhn import SVHN_CLASSES, load_mat

    if data.draw(st.booleans()):
        damaged = bytearray(data.draw(st.binary(max_size=400)))
    else:
        damaged = bytearray(good_svhn_mat[:data.draw(st.integers(0, len(good_svhn_mat)))])
        for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
            if damaged:
                damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("svhn") / "train_32x32.mat"
    path.write_bytes(bytes(damaged))
    try:
        split = load_mat(path, SVHN_CLASSES)
    except CnnctlError:
        return
    assert split.images.shape[1:] == (3, 32, 32) and len(split.labels) == len(split.images)
    assert int(split.labels.min()) >= 0 and int(split.labels.max()) <= 9
