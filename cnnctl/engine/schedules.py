"""Learning-rate schedules as pure functions of the optimizer step, plus the little state ``plateau`` needs.

Every schedule is a formula ``lr(step)`` over the global step ``s`` (0-based; step ``s`` is the ``s``-th call of
``optimizer.step()``), with ``S`` steps per epoch, ``E`` epochs, ``T = E·S`` steps in all and the epoch index
``e = s // S`` (0-based, i.e. the number of finished epochs). ``W = round(warmup_epochs·S)`` warm-up steps come
first: ``lr = base·(s+1)/W`` for ``s < W``. After them:

===================  ==========================================================================================
``none``             ``base``
``step``             ``base·gamma^(e // step_size)``                                      (changes per epoch)
``multistep``        ``base·gamma^(number of milestones m ≤ e)``                          (changes per epoch)
``cosine``           ``min_lr + (base − min_lr)·(1 + cos(π·(s − W)/(T − W)))/2``         (changes per step)
``cosine-restarts``  SGDR: the same curve over cycles of ``t0, t0·t_mult, …`` epochs after warm-up, counted in
                     fractional epochs ``(s − W)/S``                                      (changes per step)
``onecycle``         torch's OneCycleLR (pct_start 0.25, div_factor 25, final_div_factor 1e4, cosine
                     annealing; momentum / Adam's β1 cycles 0.95 → 0.85 → 0.95)          (changes per step)
``plateau``          ``max(base·gamma^k, min_lr)``; ``k`` grows by one when the monitored validation metric has
                     not improved (relative threshold 1e-4) for more than ``plateau_patience`` epochs
===================  ==========================================================================================

Computing the rate from the step (instead of stepping torch's schedulers) makes resuming exact — the state is
just the step count and plateau's counters, plain JSON — and lets a resumed run extend ``--epochs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cnnctl.recipe.schedules import get_schedule

if TYPE_CHECKING:
    import torch

    from cnnctl.recipe.config import TrainConfig

ONECYCLE_PCT_START = 0.25
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
ONECYCLE_MOMENTUM = (0.85, 0.95)  # (at the peak learning rate, at both ends)
PLATEAU_THRESHOLD = 1e-4


def _cosine(start: float, end: float, fraction: float) -> float:
    """From ``start`` at fraction 0 to ``end`` at fraction 1 along half a cosine (torch's _annealing_cos)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)


@dataclass(frozen=True)
class SchedulePlan:
    """The formula of one run's schedule: everything except plateau's reductions, which depend on metrics."""

    name: str
    epochs: int
    steps_per_epoch: int
    warmup_steps: int = 0
    gamma: float = 0.1
    step_size: int = 1
    milestones: tuple[int, ...] = ()
    t0: int = 1
    t_mult: int = 1
    min_lr: float = 0.0

    @property
    def total_steps(self) -> int:
        return max(1, self.epochs * self.steps_per_epoch)

    def lr(self, base: float, step: int, plateau_scale: float = 1.0) -> float:
        """The learning rate of optimizer step ``step`` for a parameter group whose base (peak) rate is ``base``."""
        if step < self.warmup_steps:
            return base * (step + 1) / self.warmup_steps
        return formula(self.name).lr(self, base, step, plateau_scale)

    def momentum(self, step: int) -> float | None:
        """OneCycle's cycled momentum for ``step``; ``None`` for every other schedule (momentum stays as set)."""
        momentum = formula(self.name).momentum
        return momentum(self, step) if momentum is not None else None

    def _onecycle(self, peak: float, step: int) -> tuple[float, float]:
        initial = peak / ONECYCLE_DIV_FACTOR
        final = initial / ONECYCLE_FINAL_DIV_FACTOR
        low, high = ONECYCLE_MOMENTUM
        rise_end = float(ONECYCLE_PCT_START * self.total_steps) - 1
        if step <= rise_end:
            fraction = step / rise_end if rise_end > 0 else 1.0
            return _cosine(initial, peak, fraction), _cosine(high, low, fraction)
        span = (self.total_steps - 1) - rise_end
        fraction = (step - rise_end) / span if span > 0 else 1.0
        return _cosine(peak, final, fraction), _cosine(low, high, fraction)


@dataclass(frozen=True)
class Formula:
    """How one schedule (an entry of :mod:`cnnctl.recipe.schedules`) sets the rate after warm-up:
    ``lr(plan, base, step, plateau_scale)``, and ``momentum(plan, step)`` if it cycles the momentum."""

    lr: Callable[[SchedulePlan, float, int, float], float]
    momentum: Callable[[SchedulePlan, int], float] | None = None


def _epoch(plan: SchedulePlan, step: int) -> int:
    return step // plan.steps_per_epoch


def _cosine_restarts(plan: SchedulePlan, base: float, step: int) -> float:
    position = (step - plan.warmup_steps) / plan.steps_per_epoch
    length = float(plan.t0)
    while position >= length:
        position -= length
        length *= plan.t_mult
    return _cosine(base, plan.min_lr, position / length)


FORMULAS: dict[str, Formula] = {
    "none": Formula(lambda plan, base, step, scale: base),
    "step": Formula(lambda plan, base, step, scale: base * plan.gamma ** (_epoch(plan, step) // plan.step_size)),
    "multistep": Formula(lambda plan, base, step, scale:
                         base * plan.gamma ** sum(1 for m in plan.milestones if m <= _epoch(plan, step))),
    "cosine": Formula(lambda plan, base, step, scale:
                      _cosine(base, plan.min_lr, (step - plan.warmup_steps)
                              / max(1, plan.total_steps - plan.warmup_steps))),
    "onecycle": Formula(lambda plan, base, step, scale: plan._onecycle(base, step)[0],
                        momentum=lambda plan, step: plan._onecycle(1.0, step)[1]),
    "plateau": Formula(lambda plan, base, step, scale: max(base * scale, plan.min_lr) if scale < 1 else base),
    "cosine-restarts": Formula(lambda plan, base, step, scale: _cosine_restarts(plan, base, step)),
}


def formula(name: str) -> Formula:
    """The formula of the schedule ``name`` (an unknown name: one line with a did-you-mean)."""
    get_schedule(name)
    return FORMULAS[name]


def plan_from_config(config: TrainConfig, steps_per_epoch: int) -> SchedulePlan:
    """The plan for ``config`` (its defaults already resolved by ``complete_config``)."""
    return SchedulePlan(
        name=config.scheduler,
        epochs=config.epochs,
        steps_per_epoch=max(1, steps_per_epoch),
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        gamma=config.gamma,
        step_size=config.step_size or 1,
        milestones=tuple(config.milestones or ()),
        t0=config.t0 or 1,
        t_mult=config.t_mult,
        min_lr=config.min_lr,
    )


@dataclass
class PlateauState:
    """ReduceLROnPlateau's counters (torch's rule: mode min/max, relative threshold, no cooldown)."""

    mode: str = "min"
    patience: int = 2
    factor: float = 0.1
    best: float | None = None
    bad_epochs: int = 0
    reductions: int = 0

    def observe(self, value: float) -> bool:
        """Record one epoch's metric; return True when the rate is reduced after it."""
        if self.best is None or self._better(value, self.best):
            self.best = value
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.reductions += 1
            self.bad_epochs = 0
            return True
        return False

    def _better(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return value < best * (1 - PLATEAU_THRESHOLD)
        return value > best * (1 + PLATEAU_THRESHOLD)

    @property
    def scale(self) -> float:
        return self.factor ** self.reductions


@dataclass
class Schedule:
    """Sets each parameter group's learning rate (and OneCycle's momentum) before every optimizer step.

    Base rates are the groups' ``initial_lr`` (set from their ``lr`` when the schedule is built), so models that
    give parts of the network their own rate keep those ratios throughout.
    """

    plan: SchedulePlan
    optimizer: Any
    plateau: PlateauState = field(default_factory=PlateauState)

    def __post_init__(self) -> None:
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def lr_at(self, step: int, group: int = 0) -> float:
        base = self.optimizer.param_groups[group]["initial_lr"]
        return self.plan.lr(base, step, self.plateau.scale)

    def apply(self, step: int) -> None:
        """Set the rates for optimizer step ``step`` (call before ``optimizer.step()``)."""
        momentum = self.plan.momentum(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.plan.lr(group["initial_lr"], step, self.plateau.scale)
            if momentum is not None:
                if "betas" in group:
                    group["betas"] = (momentum, *tuple(group["betas"])[1:])
                elif group.get("momentum", 0) > 0:
                    group["momentum"] = momentum

    def epoch_end(self, metric: float | None) -> bool:
        """After validation: plateau counts the epoch. Returns True when it reduced the rate."""
        if self.plan.name != "plateau" or metric is None:
            return False
        return self.plateau.observe(metric)

    def state_dict(self) -> dict[str, Any]:
        return {"plateau": asdict(self.plateau)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau = PlateauState(**state.get("plateau", {}))


def build_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int,
                   monitor: str = "val_loss") -> Schedule:
    """The schedule ``config`` names (already checked by ``TrainConfig.validate``)."""
    plateau = PlateauState(mode="min" if monitor.endswith("loss") else "max", patience=config.plateau_patience,
                           factor=config.gamma)
    return Schedule(plan_from_config(config, steps_per_epoch), optimizer, plateau)
