"""A trial is an ordinary training run: the Trainer with a callback that reports each epoch to Optuna and stops
the run when the pruner says so, and one-line progress prefixed with the trial's number."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from cnnctl.engine.callbacks import Callback
from cnnctl.errors import UsageError
from cnnctl.progress import Reporter, epoch_line, plural
from cnnctl.tune.report import format_params

PRUNER_NAMES = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}


class PruningCallback(Callback):
    """Reports ``monitor`` after every epoch (``trial.report(value, epoch)``) and, when the pruner says the trial
    is hopeless, sets ``trainer.should_stop``: the run then ends normally (final test, results.json), a run
    folder like any other that ``cnnctl eval`` works on. The decision is made when the epoch's numbers are
    complete, before the epoch is saved, so the saved state says the run stopped (a ``--resume`` of a pruned
    trial's folder does not train on)."""

    def __init__(self, trial: Any, monitor: str, pruner: str):
        self.trial = trial
        self.monitor = monitor
        self.pruner = pruner
        self.pruned_at: int | None = None
        self.reported: list[float] = []
        self.run_dir: Path | None = None

    def on_fit_start(self, trainer: Any) -> None:
        """A trial that continues an interrupted run first reports the epochs that run had already trained."""
        self.run_dir = trainer.run_dir
        self.trial.set_user_attr("run_dir", str(trainer.run_dir))
        if trainer.data.val is None:
            raise UsageError("a search needs a validation split: its objective is --monitor on it (the test set "
                             "never chooses)", hint="pass --val-split N, or give the dataset a val/ folder")
        for row in trainer.history:
            self._report(row)

    def on_validation_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        self._report(metrics)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True
            trainer.stop_reason = f"pruned by Optuna's {PRUNER_NAMES[self.pruner]} after epoch {epoch}"

    def _report(self, row: dict[str, float]) -> None:
        value = float(row[self.monitor])
        self.trial.report(value if math.isfinite(value) else self._worst(), int(row["epoch"]))
        self.reported.append(value)

    @property
    def maximize(self) -> bool:
        return not self.monitor.endswith("loss")

    def _worst(self) -> float:
        return 0.0 if self.maximize else 1e30

    def best_value(self, history: list[dict[str, float]]) -> float:
        """The objective: the best epoch's value (the epoch best.safetensors holds)."""
        values = [float(row[self.monitor]) for row in history if self.monitor in row]
        values = [value if math.isfinite(value) else self._worst() for value in values] or [self._worst()]
        return max(values) if self.maximize else min(values)


class TrialReporter(Reporter):
    """Each trial's progress as lines on stderr, prefixed ``trial K`` (several workers share one terminal)."""

    def __init__(self, number: int, values: dict[str, Any], *, quiet: bool = False):
        self.prefix = f"trial {number}"
        self.values = values
        self.quiet = quiet

    def start(self, info: dict[str, Any]) -> None:
        self._say(f"{format_params(self.values)} → {info['run_dir']} ({info['train']:,} train / "
                  f"{info['val']:,} val images, {plural(info['epochs'], 'epoch')})")

    def message(self, text: str) -> None:
        if not text.startswith("sanity check"):  # the same two batches' check for every trial
            self._say(text)

    def epoch_end(self, row: dict[str, float], epochs: int) -> None:
        self._say(epoch_line(row, epochs))

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"{self.prefix}  {text}", file=sys.stderr, flush=True)
