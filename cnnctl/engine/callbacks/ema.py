"""``--ema DECAY``: an exponential moving average of the weights, updated after every optimizer step.

Built on ``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=True``, so BatchNorm's running mean and
variance are averaged like the weights (timm's ModelEmaV2 and torchvision's reference scripts do the same): the
averaged network is evaluated with statistics that belong to averaged weights, with no extra pass over the data.
Integer buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged. The first update copies the
weights; the n-th after it is ``ema = d·ema + (1 − d)·weights`` with ``d = min(decay, (1 + n) / (10 + n))``, the
warm-up of TensorFlow's ExponentialMovingAverage: without it a short run's average keeps a large share of its
first, untrained weights (0.999^1290 = 27% after 3 LeNet-5 epochs on MNIST, which cost 0.5% test accuracy).
Validation, ``last.safetensors``, ``best.safetensors`` and the final test use the average; the training state
keeps both, so a resumed run continues the same average.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import unwrap
from cnnctl.engine.callbacks.base import Callback

if TYPE_CHECKING:
    import torch

    from cnnctl.engine.fit import Trainer


def build_average(model: torch.nn.Module, decay: float | None) -> torch.nn.Module | None:
    """An ``AveragedModel`` of ``model`` (a copy on its device) that ``update_parameters(model)`` moves towards
    it with ``decay``; None without a decay."""
    if not decay:
        return None
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    @torch.no_grad()
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        if torch.is_floating_point(averaged[0]):
            updates = int(count)
            get_ema_multi_avg_fn(min(decay, (1 + updates) / (10 + updates)))(averaged, current, count)
        else:  # step counters: the model's own
            torch._foreach_copy_(averaged, current)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


class ExponentialMovingAverage(Callback):
    """Updates ``trainer.averaged`` (made in setup, before a resume restores it) after each optimizer step."""

    order = -50

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        if trainer.averaged is not None:
            trainer.averaged.update_parameters(unwrap(trainer.model))
