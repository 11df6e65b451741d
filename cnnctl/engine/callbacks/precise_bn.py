"""``--precise-bn`` (the default): BatchNorm running statistics re-estimated with the current weights at the end
of every epoch's training, before validation and before the epoch is saved (see :mod:`cnnctl.engine.batchnorm`
for why and how)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import unwrap
from cnnctl.data.loader import BatchLoader
from cnnctl.engine.batchnorm import PRECISE_BN_IMAGES, batchnorm_layers, recompute_batchnorm
from cnnctl.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer


class PreciseBatchNorm(Callback):
    """``--precise-bn`` (on by default): after each epoch's last optimizer step, before validation and before the
    epoch is saved, :func:`recompute_batchnorm` over a fixed set of up to ``PRECISE_BN_IMAGES`` training images.

    Every process computes the same statistics from the same images (and distributed training then gives all
    ranks rank 0's buffers, as after every epoch). Skipped for networks without BatchNorm and during
    ``--freeze-epochs``, whose BatchNorm statistics are frozen with the rest of the body."""

    order = -40  # after the weights' average (-50) took the last step, before user callbacks see it

    def __init__(self) -> None:
        self._batches: Any = None

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        if step != len(trainer.train_batches) or not trainer.config.precise_bn or trainer.head_only.frozen:
            return
        # the model that is validated and saved: with --ema the average, whose statistics the raw steps blurred
        model = trainer.averaged.module if trainer.averaged is not None else unwrap(trainer.model)
        if not batchnorm_layers(model):
            return
        recompute_batchnorm(model, self._fixed_batches(trainer))

    def _fixed_batches(self, trainer: Trainer) -> Any:
        """The same training images every epoch (seeded by --seed), un-augmented, at the training batch size."""
        if self._batches is None:
            import torch

            train, config = trainer.data.train, trainer.config
            generator = torch.Generator().manual_seed(config.seed)
            chosen = torch.randperm(len(train), generator=generator)[:PRECISE_BN_IMAGES]
            self._batches = BatchLoader(train.subset(chosen), trainer.data.preprocessing,
                                        batch_size=config.batch_size, device=trainer.device,
                                        channels_last=bool(config.channels_last))
        return self._batches
