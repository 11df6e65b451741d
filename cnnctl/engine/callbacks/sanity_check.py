"""Before the first epoch of a new run: the loss on 2 validation batches, which must be near ln(classes) (an
untrained classifier guesses); far from it means the labels, normalisation or head are wrong. With several
processes it also says how the batch is shared."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from cnnctl.data.targets import MULTILABEL
from cnnctl.engine.callbacks.base import Callback
from cnnctl.engine.evaluate import evaluate
from cnnctl.engine.multilabel import evaluate_multilabel

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer


class SanityCheck(Callback):
    order = -90  # right after the progress display's first line

    def on_fit_start(self, trainer: Trainer) -> None:
        dist, config = trainer.dist, trainer.config
        if dist.enabled:
            trainer.reporter.message(f"distributed: {dist.world_size} processes "
                                     f"({'nccl' if trainer.device.type == 'cuda' else 'gloo'}), each trains on "
                                     f"{trainer.per_rank_batch} of every {config.batch_size} images per step"
                                     + (", SyncBatchNorm" if config.sync_bn else ""))
        if trainer.val_batches is not None and trainer.resume_dir is None:
            classes = len(trainer.data.classes)
            if trainer.task == MULTILABEL:  # an untrained label is a coin toss: ln 2 per label
                loss = evaluate_multilabel(trainer.eval_model(), trainer.val_batches, classes, max_batches=2).loss
                chance = f"chance ≈ {math.log(2):.3f} per label"
            else:
                loss = evaluate(trainer.eval_model(), trainer.val_batches, classes, max_batches=2).loss
                chance = f"chance ≈ {math.log(classes):.3f}"
            trainer.reporter.message(f"sanity check on 2 validation batches: loss {loss:.3f} ({chance})")
