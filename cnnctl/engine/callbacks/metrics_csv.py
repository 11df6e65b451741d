"""metrics.csv, one row per epoch, rewritten atomically from the history after the epoch's state is saved."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from cnnctl.engine.callbacks.base import Callback
from cnnctl.fsutil import atomic_write_text

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer

# ``lr`` is the learning rate of the epoch's first optimizer step and ``lr_end`` of its last; train_* are
# averaged over the epoch's batches as they were trained (with label smoothing, if on).
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "lr_end", "epoch_time_s",
                  "images_per_s")


def write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    """Rewrite metrics.csv from the history (atomically): a known column order, then any other keys."""
    columns = [c for c in METRIC_COLUMNS if any(c in row for row in history)]
    for row in history:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({key: row.get(key, "") for key in columns})
    atomic_write_text(path, buffer.getvalue())


class MetricsCsv(Callback):
    order = 110  # after the checkpoint saver: the state is the commit point, the CSV follows it

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.dist.is_main:
            write_metrics(trainer.folder.metrics, trainer.history)
