"""Optimizers by name, with the defaults ``TrainConfig`` resolves (learning rate, momentum, weight decay)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch

    from cnnctl.config import TrainConfig


def build_optimizer(config: TrainConfig, parameters: Any) -> torch.optim.Optimizer:
    """``parameters``: the model's parameters or a list of parameter groups (groups keep their own ``lr``).

    ``--momentum`` is SGD's and RMSprop's momentum and Adam's/AdamW's β1; ``--nesterov`` is SGD's.
    """
    import torch

    lr = config.resolved_lr()
    momentum = config.resolved_momentum()
    decay = config.resolved_weight_decay()
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(momentum, 0.999), weight_decay=decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=(momentum, 0.999), weight_decay=decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=config.nesterov, weight_decay=decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, momentum=momentum, weight_decay=decay)
    raise UsageError(f"unknown optimizer {config.optimizer!r}")
