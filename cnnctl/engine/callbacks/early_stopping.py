"""``--patience N``: stop when the monitored metric has not improved for N epochs (the run then finishes as
usual: final test, results.json). The counters live in the trainer's MetricTracker, saved with the state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnctl.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer


class EarlyStopping(Callback):
    order = -50

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        tracker = trainer.tracker
        if epoch < trainer.config.epochs and tracker.should_stop(trainer.config.patience):
            trainer.should_stop = True
            trainer.stop_reason = (f"early stopping: {trainer.monitor} has not improved for {tracker.bad_epochs} "
                                   f"epochs (best {tracker.best_value:.4f} in epoch {tracker.best_epoch})")

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.stop_reason.startswith("early stopping"):
            trainer.reporter.message(trainer.stop_reason)
