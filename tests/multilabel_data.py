"""A tiny multi-label dataset for the tests: 28x28 grey images with up to four bright quadrants, one label per
lit quadrant (``nw``, ``ne``, ``sw``, ``se``); every image has one or two labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

QUADRANTS = ("ne", "nw", "se", "sw")  # sorted, as a label file's classes are
CORNERS = {"nw": (0, 0), "ne": (0, 14), "sw": (14, 0), "se": (14, 14)}


def quadrant_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×28×28 images and float32 N×4 0/1 targets (columns in QUADRANTS order)."""
    generator = np.random.default_rng(seed)
    targets = np.zeros((count, len(QUADRANTS)), dtype=np.float32)
    images = (generator.random((count, 28, 28)) * 40).astype(np.uint8)
    for row in range(count):
        lit = generator.choice(len(QUADRANTS), size=1 + int(generator.random() < 0.6), replace=False)
        for column in lit:
            top, left = CORNERS[QUADRANTS[column]]
            images[row, top + 3:top + 11, left + 3:left + 11] = 200 + generator.integers(0, 55)
            targets[row, column] = 1
    return images, targets


def write_label_file(folder: Path, count: int, seed: int, *, splits: bool = False) -> Path:
    """PNGs and a labels.csv (path,label[,split]) with ``a|b`` for two labels."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images, targets = quadrant_images(count, seed)
    lines = ["path,label" + (",split" if splits else "")]
    for row in range(count):
        name = f"img{row:04d}.png"
        Image.fromarray(images[row]).save(folder / name)
        labels = "|".join(QUADRANTS[c] for c in np.nonzero(targets[row])[0])
        split = "" if not splits else ("," + ("test" if row % 5 == 0 else "val" if row % 5 == 1 else "train"))
        lines.append(f"{name},{labels}{split}")
    path = folder / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
