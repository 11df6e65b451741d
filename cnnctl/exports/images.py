"""The images an export is judged and calibrated on: the labelled split evaluation uses (the checkpoint's test split,
or the folder given as ``--data``) when it is on this machine (nothing is downloaded), a sample of the training
images for calibration, and seeded random pixels when there is nothing else to compare on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.download import is_present
from cnnctl.data.loader import BatchLoader, Normalizer, fit_to_input
from cnnctl.data.splits import eval_split
from cnnctl.errors import CnnctlError
from cnnctl.exports.formats import Calibration
from cnnctl.registry import datasets

if TYPE_CHECKING:
    import torch

    from cnnctl.checkpoint import CheckpointMeta

RANDOM_COUNT = 16
BATCH = 256


@dataclass
class Labelled:
    """A labelled split to evaluate on, in normalised batches, and what it is in words."""

    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    count: int
    described: str


def labelled_split(meta: CheckpointMeta, *, split: str = "test", root: Any = None, data: Any = None,
                   batch_size: int = BATCH) -> tuple[Labelled | None, str]:
    """The split of the checkpoint's dataset (or of the folder ``data``) as normalised batches, or None and why not.
    A registered dataset is used only if its files are here; an image folder only if it exists."""
    import torch

    described = _where(meta, split, root, data)
    if described is None or described.startswith("!"):
        return None, (described or "!")[1:]
    try:
        images = eval_split(meta, split=split, root=str(root) if root else None,
                            data_dir=str(data) if data else None)
    except CnnctlError as error:
        if data:
            raise
        return None, f"{described} could not be read: {error.message}"
    if len(images) == 0:
        return None, f"{described} holds no images"
    if data or meta.dataset == "folder":
        folder, part = data or meta.data_dir, Path(str(getattr(images, "source", "") or "")).name
        described = f"the {part} split of {folder}" if part in ("test", "val", "train") else f"the images of {folder}"
    batches = BatchLoader(images, meta.preprocessing, batch_size=batch_size, device=torch.device("cpu"))
    return Labelled(batches, len(images), f"{len(images)} images of {described}"), ""


def _where(meta: CheckpointMeta, split: str, root: Any, data: Any) -> str | None:
    """The split in words, or ``!why`` it is not on this machine."""
    if data:
        if not _present(data):
            raise CnnctlError(f"--data {data} does not exist",
                              hint="a class folder, a label file, a .parquet table or tar shards")
        return f"the images of {data}"
    if not meta.dataset:
        return "!the checkpoint names no dataset"
    if meta.dataset == "folder":
        folder = meta.data_dir
        if not folder:
            return "!the checkpoint does not say which data it was trained on"
        if not _present(folder):
            return f"!the data it was trained on, {folder}, is not on this machine"
        return f"the {split} split of {folder}"
    spec = datasets().get(meta.dataset)
    if spec is None:
        return f"!dataset {meta.dataset} is not registered"
    if not spec.files or not is_present(spec.storage_name, spec.files, Path(root) if root else None):
        return (f"!the {spec.name} {split} split is not on this machine; `cnnctl download {spec.name}` fetches it"
                " (or pass --data FOLDER)")
    return f"the {spec.name} {'training' if split == 'train' else split} split"


def _present(data: Any) -> bool:
    """Whether ``--data`` names something here: a folder, a file (label file, table, shard) or shards by pattern."""
    import glob

    path = str(Path(str(data)).expanduser())
    return Path(path).exists() or bool(glob.glob(path))


def random_inputs(meta: CheckpointMeta, count: int = RANDOM_COUNT) -> torch.Tensor:
    """``count`` normalised images of seeded random pixels (seed 0) at the checkpoint's size."""
    import torch

    channels, (height, width) = meta.preprocessing.channels, meta.preprocessing.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, channels, height, width), dtype=torch.uint8, generator=generator)
    return normalise(images, meta)


def normalise(images: torch.Tensor, meta: CheckpointMeta) -> torch.Tensor:
    import torch

    fitted = fit_to_input(images, meta.preprocessing)
    return Normalizer(meta.preprocessing.mean, meta.preprocessing.std, torch.device("cpu"))(fitted).contiguous()


def calibration_images(meta: CheckpointMeta, *, count: int, method: str, root: Any = None, data: Any = None,
                       format: str = "this format", seed: int = 0) -> Calibration:
    """``count`` training images drawn at random (seeded) from the split training used (``--data``: from that
    folder), normalised. Fails in one line when they are not on this machine: calibrating on anything else
    would quantise for the wrong ranges."""
    import torch

    labelled, why = labelled_split(meta, split="train", root=root, data=data, batch_size=BATCH)
    if labelled is None:
        raise CnnctlError(f"{format} calibrates on training images, and {why}")
    generator = torch.Generator().manual_seed(seed)
    chosen = set(torch.randperm(labelled.count, generator=generator)[:count].tolist())
    picked, start = [], 0
    for inputs, _ in labelled.batches:  # in order; only the chosen ones are kept
        keep = [i for i in range(inputs.shape[0]) if start + i in chosen]
        if keep:
            picked.append(inputs[keep])
        start += int(inputs.shape[0])
    images = torch.cat(picked)
    source = labelled.described.split(" images of ", 1)[-1]
    return Calibration(images, method, f"{images.shape[0]} images drawn (seed {seed}) from {labelled.count} of "
                                       f"{source}")


def random_calibration(meta: CheckpointMeta, *, count: int, method: str) -> Calibration:
    """Random pixels to calibrate on, for timing only (``cnnctl benchmark`` without the training images)."""
    return Calibration(random_inputs(meta, count), method, f"{count} random images (seed 0)", split="random")
