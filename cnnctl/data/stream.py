"""Image folders larger than the memory budget: the training images decoded in worker processes every epoch.

An image folder is normally decoded once into one uint8 tensor (data/folder.py). When that tensor would not fit
the memory budget (``--cache auto``, the default) or when asked (``--cache none``), the training split is kept as
a list of files instead: each epoch, DataLoader worker processes decode and resize the files of each batch
exactly as the one-time decode does, and the batch then takes the in-memory path's road (channel conversion,
augmentation, normalisation as batch tensor ops, data/loader.py). The order and every random draw come from the
loader's own generator in the main process, so a streamed run draws the same batches as the same run in memory,
and a resumed one redraws them. Memory stays at a few batches in flight, whatever the folder's size.

The budget is half of the memory this process can still take (the machine's available memory, or less under a
container's or job's memory limit: data/memory.py), or ``CNNCTL_MEMORY_BUDGET`` (bytes; ``K``/``M``/``G``
suffixes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.images import ResizeTarget, decode_file, fit_to_target
from cnnctl.data.memory import available_memory
from cnnctl.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch

BUDGET_ENV = "CNNCTL_MEMORY_BUDGET"
MEMORY_FRACTION = 0.5  # without CNNCTL_MEMORY_BUDGET: cache at most this share of the available memory
CACHE_MODES = ("auto", "memory", "none")
PREFETCH_BATCHES = 2  # per worker: decoded batches waiting for the training step


def parse_bytes(text: str) -> int:
    """``"2000000"``, ``"64K"``, ``"200M"``, ``"1.5G"`` (binary multiples) → bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise UsageError(f"{BUDGET_ENV}={text!r} is not a size", hint="give bytes, or a number with K, M or G")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024**power)


def memory_budget() -> tuple[int | None, str]:
    """How many bytes of decoded images may be kept in memory, and where that number comes from."""
    value = os.environ.get(BUDGET_ENV)
    if value:
        return parse_bytes(value), BUDGET_ENV
    available = available_memory()
    if available is None:
        return None, "the available memory is unknown"
    return int(MEMORY_FRACTION * available.bytes), f"half of {available.source}"


def size_text(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.1f} GiB"
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"


@dataclass(frozen=True)
class CachePlan:
    """Whether the training split streams, and the one line that says so and why."""

    stream: bool
    reason: str


def plan_cache(mode: str, counts: dict[str, int], image_bytes: int, where: str, workers: int) -> CachePlan:
    """``--cache`` against the budget: ``counts`` images per split of ``image_bytes`` each once decoded."""
    if mode not in CACHE_MODES:
        raise UsageError(f"unknown --cache {mode!r}", hint="choose auto, memory or none")
    total = sum(counts.values())
    needed = total * image_bytes
    budget, source = memory_budget()
    held_out = (total - counts.get("train", 0)) * image_bytes
    over = budget is not None and needed > budget
    if mode == "memory" or (mode == "auto" and not over):
        why = "--cache memory" if mode == "memory" else (
            f"within the budget of {size_text(budget)}, {source}" if budget is not None else source)
        return CachePlan(False, f"decoding {total:,} images from {where} into memory ({size_text(needed)}; {why})")
    if budget is not None and held_out > budget:
        raise UsageError(f"the validation and test images alone need {size_text(held_out)} decoded, more than the "
                         f"memory budget of {size_text(budget)} ({source}); only the training images can stream",
                         hint="pass a smaller --img-size, or move images from val/ and test/ into train/")
    why = "--cache none" if mode == "none" else (
        f"{size_text(needed)} decoded would exceed the memory budget of {size_text(budget)}, {source}")
    return CachePlan(True, f"streaming {counts.get('train', 0):,} training images from {where}: decoded by "
                           f"{workers} worker process(es) every epoch ({why}); validation and test images are "
                           "kept in memory")


class _StreamFiles:
    """Worker-side dataset: position → (position, uint8 C×H×W image as the one-time decode makes it, problem)."""

    def __init__(self, images: StreamedImages):
        self.images = images
        self.target = ResizeTarget(images.size, images.resize, images.interpolation)

    def __len__(self) -> int:
        return len(self.images.files)

    def __getitem__(self, position: int) -> tuple[int, Any, str]:
        spec = self.images
        try:
            image, header = decode_file(spec.files[position], spec.max_pixels, self.target)
        except DataError as error:
            return position, None, error.message
        return position, fit_to_target(image, header, self.target)[:spec.channels], ""


def _stack(batch: list[tuple[int, Any, str]]) -> tuple[Any, list[str]]:
    """One uint8 batch tensor of the images that decoded (one transfer from the worker, not one per image) and
    what went wrong with the others (one entry per image, empty where it decoded)."""
    import torch

    images = [image for _, image, _ in batch if image is not None]
    return (torch.stack(images) if images else None), [problem for _, _, problem in batch]


@dataclass(frozen=True)
class StreamedImages:
    """A split kept as files: what :class:`~cnnctl.data.base.ImageTensors` holds, without the pixels.

    ``channels`` 1 keeps the first of three equal channels (the folder is grey), as the in-memory path does.
    """

    files: tuple[Path, ...]
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str
    size: tuple[int, int]
    channels: int = 3
    resize: int | None = None
    interpolation: str = "bilinear"
    max_pixels: int | None = None
    workers: int = 2
    weights: torch.Tensor | None = None  # float N: each image's weight in the training loss (a label file's)

    streamed = True  # BatchLoader decodes this split's batches in workers (data/loader.py)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(str(path) for path in self.files)

    def subset(self, indices: torch.Tensor) -> StreamedImages:
        chosen = indices.tolist()
        return replace(self, files=tuple(self.files[i] for i in chosen), labels=self.labels[indices],
                       weights=None if self.weights is None else self.weights[indices])

    def as_grey(self) -> StreamedImages:
        return replace(self, channels=1)

    def batches(self, chunks: Sequence[Sequence[int]]) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """The uint8 images of each chunk of positions, in order, decoded by worker processes ahead of use, and
        None, or where an image could not be read (changed or broken since the decode that checked it: a row of a
        streamed epoch is skipped, never a crash) a bool mask of those that could (the images are those only)."""
        import torch
        from torch.utils.data import DataLoader

        if not chunks:
            return
        workers = min(self.workers, len(chunks))
        # its own generator: the workers' seeds must not be drawn from torch's global one (dropout's), or a
        # resumed run would draw differently from an uninterrupted one
        loader = DataLoader(_StreamFiles(self), batch_sampler=[list(chunk) for chunk in chunks],
                            num_workers=workers, collate_fn=_stack, generator=torch.Generator().manual_seed(0),
                            prefetch_factor=PREFETCH_BATCHES if workers else None)
        for images, problems in loader:
            if any(problems):
                yield images, torch.tensor([not problem for problem in problems], dtype=torch.bool)
            else:
                yield images, None


def stream_workers(count: int) -> int:
    """Worker processes that decode while the main process trains: one per core, at least one, at most 8."""
    return max(1, min(8, os.cpu_count() or 1)) if count else 0
