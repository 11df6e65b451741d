"""The real MNIST, found or fetched the way ``cnnctl download mnist`` does, and image folders cut from it.

The four official ``.gz`` files come from the data folder (``$CNNCTL_DATA``, else ``~/.cache/cnnctl/data``); what
is missing is fetched there from ``$CNNCTL_MIRROR`` (a folder or URL holding them) or the official mirrors and
verified by checksum. Without internet, set ``CNNCTL_MIRROR`` as the README says. Used by the tests that need
real digits and by ``benchmarks/smalldata.py``, so both train on exactly the same files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


@functools.cache
def mnist_mirror() -> Path:
    """The folder holding the four verified MNIST ``.gz`` files (fetched into the data folder if needed)."""
    from cnnctl import registry
    from cnnctl.data.splits import dataset_directory
    from cnnctl.errors import CnnctlError

    try:
        return dataset_directory(registry.get_dataset_spec("mnist"), root=None,
                                 mirror=os.environ.get("CNNCTL_MIRROR") or None, log=lambda message: None)
    except CnnctlError as error:
        raise RuntimeError(f"the real MNIST is needed and could not be fetched: {error}. Without internet: "
                           "export CNNCTL_MIRROR=/path/to/mnist (a folder holding the four official .gz files)"
                           ) from error


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
