"""The progress display: the training loop's events passed on to the run's Reporter (rich bars on a terminal,
one line per epoch otherwise). It reads ``trainer.reporter`` at each event, so a reporter set after the Trainer
was made is the one used."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer


class ProgressDisplay(Callback):
    order = -100  # the epoch's line comes before anything other callbacks say about it

    def on_fit_start(self, trainer: Trainer) -> None:
        data, config = trainer.data, trainer.config
        trainer.reporter.start({
            "arch": trainer.model_spec.name, "device": str(trainer.device),
            "dataset": _data_name(config.data_dir) if config.data_dir else data.dataset_label,
            "parameters": sum(p.numel() for p in trainer.model.parameters()), "train": len(data.train),
            "val": len(data.val) if data.val is not None else 0,
            "test": len(data.test) if data.test is not None else 0, "run_dir": str(trainer.run_dir),
            "epochs": config.epochs, "batch_size": config.batch_size,
            "threads": trainer.thread_choice.note if trainer.thread_choice else "",
        })

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        trainer.reporter.epoch_start(epoch, trainer.config.epochs, len(trainer.train_batches))

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        trainer.reporter.step(step, loss)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        trainer.reporter.epoch_end(metrics, trainer.config.epochs)


def _data_name(data_dir: str) -> str:
    """``folder flowers`` for a class folder, the file's name for a label file or a shard."""
    path = Path(data_dir)
    return f"folder {path.name}" if path.is_dir() else path.name
