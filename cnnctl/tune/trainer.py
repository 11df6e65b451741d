"""A trial is an ordinary training run: the Trainer with a callback that reports each epoch to Optuna and stops
the run when the pruner says so, in the trial's own folder ``tune-NAME/trial-K``, with one-line progress."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from cnnctl.engine.fit import Trainer
from cnnctl.progress import Reporter, epoch_line

PRUNER_NAMES = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}


class PruningCallback:
    """Reports ``monitor`` after every epoch (``trial.report(value, epoch)``) and, when the pruner says the trial
    is hopeless, sets ``trainer.should_stop``: the run then ends normally (final test, results.json), a run
    folder like any other that ``cnnctl eval`` and ``--resume`` work on."""

    def __init__(self, trial: Any, monitor: str, pruner: str):
        self.trial = trial
        self.monitor = monitor
        self.pruner = pruner
        self.pruned_at: int | None = None
        self.reported: list[float] = []

    def on_fit_start(self, trainer: Any) -> None:
        """A trial that continues an interrupted run first reports the epochs that run had already trained."""
        from cnnctl.errors import UsageError

        if trainer.data.val is None:
            raise UsageError("a search needs a validation split: its objective is --monitor on it (the test set "
                             "never chooses)", hint="pass --val-split N, or give the dataset a val/ folder")
        for row in trainer.history:
            self._report(row)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        self._report(metrics)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True
            trainer.stop_reason = f"pruned by Optuna's {PRUNER_NAMES[self.pruner]} after epoch {epoch}"

    def _report(self, row: dict[str, float]) -> None:
        value = float(row[self.monitor])
        self.trial.report(value if math.isfinite(value) else self._worst(), int(row["epoch"]))
        self.reported.append(value)

    def _worst(self) -> float:
        return 0.0 if self.monitor == "val_acc" else 1e30

    def best_value(self, history: list[dict[str, float]]) -> float:
        """The objective: the best epoch's value (the epoch best.safetensors holds)."""
        values = [float(row[self.monitor]) for row in history if self.monitor in row]
        values = [value if math.isfinite(value) else self._worst() for value in values] or [self._worst()]
        return max(values) if self.monitor == "val_acc" else min(values)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrialTrainer(Trainer):
    """The Trainer, writing into the trial's folder ``run_dir`` (created exclusively) instead of the next
    numbered folder under ``--out``."""

    def __init__(self, config: Any, reporter: Reporter | None = None, *, run_dir: Path | None = None,
                 callbacks: list[Any] | None = None, resume: str | Path | None = None):
        super().__init__(config, reporter, resume=resume)
        self.trial_dir = run_dir
        self.trial_callbacks = list(callbacks or [])
        self.should_stop = False

    def add_callback(self, callback: Any) -> None:
        self.trial_callbacks.append(callback)

    def _new_run_dir(self) -> Path:
        if self.trial_dir is None:
            return super()._new_run_dir()
        self.trial_dir.mkdir(parents=True)
        return self.trial_dir

    def report_start(self) -> None:
        super().report_start()
        for callback in self.trial_callbacks:
            callback.on_fit_start(self)

    def save_epoch(self, epoch: int, row: dict[str, float], *args: Any) -> None:
        super().save_epoch(epoch, row, *args)
        for callback in self.trial_callbacks:
            callback.on_epoch_end(self, epoch, row)
        if self.should_stop:
            self.stopped_early = True


class TrialReporter(Reporter):
    """Each trial's progress as lines on stderr, prefixed ``trial K`` (several workers share one terminal)."""

    def __init__(self, number: int, values: dict[str, Any], *, quiet: bool = False):
        self.prefix = f"trial {number}"
        self.values = values
        self.quiet = quiet

    def start(self, info: dict[str, Any]) -> None:
        from cnnctl.tune.report import format_params

        self._say(f"{format_params(self.values)} → {info['run_dir']} ({info['train']:,} train / "
                  f"{info['val']:,} val images, {info['epochs']} epochs)")

    def message(self, text: str) -> None:
        if not text.startswith(("sanity check", "early stopping")):
            self._say(text)

    def epoch_end(self, row: dict[str, float], epochs: int) -> None:
        self._say(epoch_line(row, epochs))

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"{self.prefix}  {text}", file=sys.stderr, flush=True)
