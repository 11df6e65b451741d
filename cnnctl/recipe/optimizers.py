"""Optimizers by name: one ``register_optimizer`` entry each (description, default hyperparameters, and a
reference to the function that builds it).

``TrainConfig`` resolves the learning rate, momentum and weight decay from the entry, ``--optimizer`` lists the
registered names, and the engine's ``build_optimizer`` (cnnctl/engine/optim.py) calls the entry's builder. Adding
an optimizer is one decorated function, here or in any module imported before training (docs/development.md)::

    @register_optimizer("sgdw", description="SGD with decoupled weight decay", lr=0.05, onecycle_lr=0.1)
    def _sgdw(parameters, *, lr, momentum, weight_decay, nesterov):
        import torch
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=nesterov)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnctl.registry import suggest

if TYPE_CHECKING:
    import torch

OptimizerBuilder = Callable[..., "torch.optim.Optimizer"]


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer: ``builder(parameters, *, lr, momentum, weight_decay, nesterov)`` and its defaults.

    ``lr`` is the default rate for every schedule but onecycle, which peaks at ``onecycle_lr``
    (``lenet_onecycle_lr`` for the LeNet family, whose small networks train fastest higher).
    ``momentum`` is SGD's/RMSprop's momentum or Adam's β1; ``nesterov`` says whether ``--nesterov`` applies.
    """

    name: str
    description: str
    builder: OptimizerBuilder
    lr: float
    onecycle_lr: float | None = None
    lenet_onecycle_lr: float | None = None
    finetune_lr: float | None = None  # with --pretrained, the new classifier's (the backbone's is scaled down)
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False

    def default_lr(self, scheduler: str, lenet_sized: bool, pretrained: bool = False) -> float:
        if pretrained and self.finetune_lr is not None:
            return self.finetune_lr
        if scheduler != "onecycle":
            return self.lr
        if lenet_sized and self.lenet_onecycle_lr is not None:
            return self.lenet_onecycle_lr
        return self.onecycle_lr if self.onecycle_lr is not None else self.lr


OPTIMIZERS: dict[str, OptimizerInfo] = {}


def register_optimizer(name: str, *, description: str, lr: float, **defaults: Any
                       ) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
    """Decorate a builder to register it under ``name`` (see :class:`OptimizerInfo` for ``defaults``)."""

    def decorate(builder: OptimizerBuilder) -> OptimizerBuilder:
        OPTIMIZERS[name] = OptimizerInfo(name, description, builder, lr, **defaults)
        return builder

    return decorate


def get_optimizer(name: str) -> OptimizerInfo:
    if name not in OPTIMIZERS:
        raise suggest(name, list(OPTIMIZERS), "optimizer")
    return OPTIMIZERS[name]


# Fine-tuning: the new classifier at 3e-3, the pretrained layers at a tenth of it (--backbone-lr-scale); 1e-3
# leaves the head under-trained after a few epochs on a few hundred images (benchmarks/finetune.py).
FINETUNE_LR = 3e-3


# LeNet-sized networks train fastest at a 5e-3 one-cycle peak; deeper BatchNorm networks (ResNet, MobileNet) need
# the usual 1e-3 or their running statistics cannot follow the weights and evaluation collapses.
@register_optimizer("adam", description="Adam (β1 = --momentum)", lr=1e-3, lenet_onecycle_lr=5e-3,
                    finetune_lr=FINETUNE_LR)
def _adam(parameters: Any, *, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> Any:
    import torch

    return torch.optim.Adam(parameters, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


@register_optimizer("adamw", description="AdamW: Adam with decoupled weight decay (0.01 by default)", lr=1e-3,
                    lenet_onecycle_lr=5e-3, finetune_lr=FINETUNE_LR, weight_decay=0.01)
def _adamw(parameters: Any, *, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> Any:
    import torch

    return torch.optim.AdamW(parameters, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


@register_optimizer("sgd", description="SGD with momentum (--nesterov for Nesterov's)", lr=0.05, onecycle_lr=0.1,
                    nesterov=True)
def _sgd(parameters: Any, *, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> Any:
    import torch

    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@register_optimizer("rmsprop", description="RMSprop (no momentum by default)", lr=1e-3, momentum=0.0)
def _rmsprop(parameters: Any, *, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> Any:
    import torch

    return torch.optim.RMSprop(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
