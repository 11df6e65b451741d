"""End of an epoch: last.safetensors, best.safetensors (by the monitored metric), the top-K copies
(``--keep K``) and then the training state, the commit point: a crash before it only repeats the epoch on
resume. Rank 0 alone writes. It runs after every other callback's ``on_validation_end``, so their decisions
(``should_stop``) and ``state_dict()`` are in the saved state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl import checkpoint
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.engine.callbacks.base import Callback
from cnnctl.engine.state import save_training_state
from cnnctl.fsutil import atomic_copy

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer


class CheckpointSaver(Callback):
    order = 100

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.dist.is_main and trainer.resume_dir is not None:
            trainer.folder.remove_orphan_top_checkpoints([int(item["epoch"]) for item in trainer.tracker.top])

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if not trainer.dist.is_main:
            return
        folder = trainer.folder
        improved, in_top, dropped = trainer.improvement
        # the weights validated: with --ema the average (the training state keeps the raw weights too)
        checkpoint.save(folder.last, trainer.eval_model(), checkpoint_meta(trainer, epoch, metrics))
        if improved:  # the same weights and metadata: copy the file rather than serialise the model again
            atomic_copy(folder.last, folder.best)
        if trainer.config.keep > 1 and in_top:
            atomic_copy(folder.last, folder.top(epoch))
        save_training_state(trainer, epoch, 0, trainer.train_batches.generator.get_state())
        for old in dropped:
            folder.top(old).unlink(missing_ok=True)


def checkpoint_meta(trainer: Trainer, epoch: int, row: dict[str, float]) -> Any:
    """What a checkpoint of this run says about itself: architecture, classes, preprocessing, data, metrics."""
    config, data = trainer.config, trainer.data
    distillation = getattr(trainer, "distillation", None)  # --teacher (engine/distill.py)
    return CheckpointMeta(arch=config.arch, arch_args=dict(config.arch_args), classes=list(data.classes),
                          preprocessing=data.preprocessing, dataset=data.dataset_label, data_dir=config.data_dir,
                          epoch=epoch, metrics={k: float(v) for k, v in row.items() if k != "epoch"},
                          config=config.to_dict(), image_stats=trainer.image_stats,
                          pretrained=trainer.pretrained.to_dict() if trainer.pretrained is not None else None,
                          distillation=distillation.record() if distillation is not None else None,
                          task=trainer.task, thresholds=trainer.thresholds,
                          label_count=list(trainer.label_count) if trainer.label_count is not None else None)
