"""Build the optimizer a configuration names, from its entry in :mod:`cnnctl.recipe.optimizers`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.recipe.optimizers import get_optimizer

if TYPE_CHECKING:
    import torch

    from cnnctl.recipe.config import TrainConfig


def build_optimizer(config: TrainConfig, parameters: Any) -> torch.optim.Optimizer:
    """``parameters``: the model's parameters or a list of parameter groups (groups keep their own ``lr``)."""
    return get_optimizer(config.optimizer).builder(
        parameters, lr=config.resolved_lr(), momentum=config.resolved_momentum(),
        weight_decay=config.resolved_weight_decay(), nesterov=config.nesterov)
