"""Image folders larger than the memory budget stream: the training images are decoded by worker processes every
epoch, and the run is the run the in-memory cache gives (same batches, same weights, same preprocessing), resumes
exactly, and keeps its memory flat from epoch to epoch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from real_mnist import load_mnist
from safetensors.torch import load_file
from test_resume import InterruptAt, assert_same_weights, metrics

import cnnctl
from cnnctl import checkpoint
from cnnctl.data.stream import BUDGET_ENV, memory_budget, parse_bytes
from cnnctl.engine.callbacks import Callback
from cnnctl.engine.interrupt import TrainingInterrupted
from cnnctl.errors import UsageError
from cnnctl.progress import Reporter

DIGITS = (0, 1, 2, 3)
TRAIN_PER_CLASS, TEST_PER_CLASS = 150, 25
# lenet5 sees 32x32 RGB: 3,072 bytes an image once decoded; 700 images are 2.1 MB, the 160 held out 0.5 MB
BUDGET = "1M"
OPTIONS = {"arch": "lenet5", "epochs": 3, "batch_size": 32, "lr": 3e-3, "augment": "shift", "plots": False,
           "threads": 1, "deterministic": True}


def write_colour_digits(root: Path) -> Path:
    """``root/{train,test}/<digit>/*.jpg``: real MNIST digits in a random dark ink on a random light paper."""
    from PIL import Image

    rng = np.random.default_rng(5)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        images, labels = load_mnist(split)
        for digit in DIGITS:
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for index in rng.permutation(np.flatnonzero(labels == digit))[:per_class]:
                paper, ink = rng.integers(150, 256, 3), rng.integers(0, 110, 3)
                alpha = images[index][..., None].astype(np.float64) / 255
                rgb = (alpha * ink + (1 - alpha) * paper).round().astype(np.uint8)
                Image.fromarray(rgb).save(folder / f"{int(index):05d}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def colour_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_digits(tmp_path_factory.mktemp("colour-digits"))


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


class ResidentMemory(Callback):
    """The process's resident memory at the end of each epoch (MiB)."""

    def __init__(self) -> None:
        self.mib: list[float] = []

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        self.mib.append(pages * os.sysconf("SC_PAGE_SIZE") / 2**20)


def test_budget_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [parse_bytes(text) for text in ("2000", "64K", "1.5M", "2G", "3 MiB")] == [
        2000, 65536, 1572864, 2 * 2**30, 3 * 2**20]
    monkeypatch.setenv(BUDGET_ENV, "200M")
    assert memory_budget() == (200 * 2**20, BUDGET_ENV)
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(UsageError, match="CNNCTL_MEMORY_BUDGET='lots' is not a size"):
        memory_budget()


def test_a_folder_over_the_budget_streams_and_trains_as_the_cache_does(colour_digits: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, BUDGET)
    said, memory = Messages(), ResidentMemory()
    streamed = cnnctl.train(data=str(colour_digits), out=str(tmp_path / "s"), reporter=said, callbacks=[memory],
                            **OPTIONS)
    line = next(text for text in said.lines if text.startswith("streaming"))
    assert "540 training images" in line and "exceed the memory budget of 1 MiB, CNNCTL_MEMORY_BUDGET" in line
    assert streamed.test["test_acc"] >= 0.9, streamed.test
    # decoded batches do not pile up: resident memory after the second epoch stays where it was
    assert max(memory.mib[1:]) - memory.mib[1] < 16, memory.mib

    monkeypatch.delenv(BUDGET_ENV)  # --cache memory refuses what the budget cannot hold
    said = Messages()
    cached = cnnctl.train(data=str(colour_digits), out=str(tmp_path / "m"), reporter=said, cache="memory",
                          **OPTIONS)
    assert any(text.startswith("decoding 700 images") and "--cache memory" in text for text in said.lines)
    # the same files, order, augmentation and statistics: the same run
    assert metrics(streamed.run_dir) == metrics(cached.run_dir)
    assert_same_weights(streamed.best_path, cached.best_path)
    stream_meta, cache_meta = checkpoint.read_meta(streamed.best_path), checkpoint.read_meta(cached.best_path)
    assert stream_meta.preprocessing == cache_meta.preprocessing
    assert stream_meta.preprocessing.channels == 3 and stream_meta.preprocessing.mean != (0.5,) * 3

    # its checkpoint evaluates (test/ decoded into memory) to the number the run reported
    evaluated = cnnctl.evaluate(streamed.best_path)
    assert evaluated["accuracy"] == pytest.approx(streamed.test["test_acc"], abs=1e-9)


def test_a_streamed_run_interrupted_mid_epoch_resumes_to_the_same_weights(colour_digits: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    options = {**OPTIONS, "epochs": 2, "cache": "none", "arch_args": {"dropout": 0.3}}
    straight = cnnctl.train(data=str(colour_digits), out=str(tmp_path / "a"), **options)
    with pytest.raises(TrainingInterrupted):
        cnnctl.train(data=str(colour_digits), out=str(tmp_path / "b"), reporter=InterruptAt(epoch=2, step=5),
                     **options)
    run_dir = next((tmp_path / "b").glob("*/1"))
    cnnctl.train(resume=run_dir)
    assert metrics(run_dir) == metrics(straight.run_dir)
    assert_same_weights(run_dir / "last.safetensors", straight.run_dir / "last.safetensors")
    state = load_file(str(run_dir / "state.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in load_file(str(straight.run_dir / "state.safetensors")).items()
               if k.startswith("model."))


def test_held_out_images_over_the_budget_are_refused_in_one_line(colour_digits: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, "100K")
    with pytest.raises(UsageError, match="the validation and test images alone need 480 KiB decoded, more than the "
                                         "memory budget of 100 KiB") as caught:
        cnnctl.train(data=str(colour_digits), out=str(tmp_path), **OPTIONS)
    assert "smaller --img-size" in caught.value.hint


def test_the_decoding_pass_of_a_streamed_split_keeps_sums_not_pixels(colour_digits: Path) -> None:
    """What a streamed split is measured with: no images kept, the statistics of the cached images."""
    from cnnctl.data.folder import _channel_stats, decode_files, scan_folder

    files = [path for path, _ in scan_folder(colour_digits).splits["train"]][:100]
    measured = decode_files(files, (32, 32), workers=0, keep=False)
    assert measured.images.numel() == 0 and len(measured.kept) == len(files) and not measured.grey
    cached = decode_files(files, (32, 32), workers=0)
    assert measured.sums.stats(3) == _channel_stats(cached.images)
