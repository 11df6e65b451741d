"""Learning-rate schedules, stepped once per batch (``per_step``) or once per epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch

SCHEDULERS = ("none", "onecycle", "cosine")


@dataclass
class Schedule:
    scheduler: Any
    per_step: bool

    def step_batch(self) -> None:
        if self.scheduler is not None and self.per_step:
            self.scheduler.step()

    def step_epoch(self, metrics: dict[str, float] | None = None) -> None:
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}


def build_schedule(name: str, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                   lr: float) -> Schedule:
    import torch

    total_steps = max(1, epochs * steps_per_epoch)
    if name == "none":
        return Schedule(None, per_step=True)
    if name == "onecycle":
        return Schedule(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps,
                                                            pct_start=0.25), per_step=True)
    if name == "cosine":
        return Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps), per_step=True)
    from cnnctl.registry import suggest

    raise suggest(name, list(SCHEDULERS), "scheduler") if name else UsageError("empty --scheduler")
