"""Image folders cut from the real MNIST (``/work/shared/datasets/mnist`` or ``$CNNCTL_MIRROR``): small, real data.

Used by the small-data tests and by ``benchmarks/smalldata.py``, so both train on exactly the same files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_MIRROR = Path("/work/shared/datasets/mnist")


def mnist_mirror() -> Path:
    """The folder holding the four official MNIST ``.gz`` files."""
    candidates = [os.environ.get("CNNCTL_MIRROR", ""), str(DEFAULT_MIRROR),
                  str(Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "mnist")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    raise FileNotFoundError("real MNIST not found: set CNNCTL_MIRROR to a folder with the four .gz files")


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28, labels N) of the real ``train`` or ``test`` split, read by cnnctl's IDX reader."""
    from cnnctl.data.idx import read_idx

    prefix = "train" if split == "train" else "t10k"
    mirror = mnist_mirror()
    return (np.asarray(read_idx(mirror / f"{prefix}-images-idx3-ubyte.gz")),
            np.asarray(read_idx(mirror / f"{prefix}-labels-idx1-ubyte.gz")))


def write_mnist_folder(root: Path, *, digits: Sequence[int] = (0, 1, 2, 3), train_per_class: int | Sequence[int] = 200,
                       test_per_class: int = 50, seed: int = 0) -> Path:
    """``root/train/<digit>/*.png`` and ``root/test/<digit>/*.png``: the first images of each digit (after a
    seeded shuffle), 28×28 grey PNGs. ``train_per_class`` may be one count per digit (an imbalanced folder)."""
    from PIL import Image

    counts = ([int(train_per_class)] * len(digits) if isinstance(train_per_class, int)
              else [int(c) for c in train_per_class])
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", counts), ("test", [test_per_class] * len(digits))):
        images, labels = load_mnist(split)
        for digit, count in zip(digits, per_class):
            chosen = rng.permutation(np.flatnonzero(labels == digit))[:count]
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                Image.fromarray(images[index]).save(folder / f"{split}{int(index):05d}.png")
    return root
