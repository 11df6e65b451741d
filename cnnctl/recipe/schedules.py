"""Learning-rate schedules by name: one ``register_schedule`` entry each (description, the defaults it derives
from ``--epochs``, what it needs of the other options). The formulas that compute each step's rate are the
engine's (cnnctl/engine/schedules.py, one per entry)::

    register_schedule(ScheduleInfo("step", "multiply by --gamma every --step-size epochs",
                                   defaults=_default_step_size))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnctl.registry import suggest

if TYPE_CHECKING:
    from cnnctl.recipe.config import TrainConfig


@dataclass(frozen=True)
class ScheduleInfo:
    """One schedule and what it needs of the options.

    ``defaults(config)`` fills the options whose default depends on ``--epochs`` (step size, milestones, cycle);
    ``needs_validation``: it reads a validation metric; ``own_warmup``: it warms up itself (no --warmup-epochs).
    """

    name: str
    description: str
    defaults: Callable[[TrainConfig], None] | None = None
    needs_validation: bool = False
    own_warmup: bool = False


SCHEDULERS: dict[str, ScheduleInfo] = {}


def register_schedule(info: ScheduleInfo) -> ScheduleInfo:
    SCHEDULERS[info.name] = info
    return info


def get_schedule(name: str) -> ScheduleInfo:
    if name not in SCHEDULERS:
        raise suggest(name, list(SCHEDULERS), "scheduler")
    return SCHEDULERS[name]


def _third_of_epochs(config: TrainConfig) -> int:
    return max(1, config.epochs // 3)


def _default_step_size(config: TrainConfig) -> None:
    if config.step_size is None:
        config.step_size = _third_of_epochs(config)


def _default_milestones(config: TrainConfig) -> None:
    if config.milestones is None:
        config.milestones = sorted({max(1, round(config.epochs * 0.5)), max(1, round(config.epochs * 0.75))})


def _default_t0(config: TrainConfig) -> None:
    if config.t0 is None:
        config.t0 = _third_of_epochs(config)


register_schedule(ScheduleInfo("none", "constant rate"))
register_schedule(ScheduleInfo("step", "multiply by --gamma every --step-size epochs", defaults=_default_step_size))
register_schedule(ScheduleInfo("multistep", "multiply by --gamma after each of --milestones",
                               defaults=_default_milestones))
register_schedule(ScheduleInfo("cosine", "cosine annealing to --min-lr"))
register_schedule(ScheduleInfo("onecycle", "one cycle: warm up to the peak, anneal to ~0 (momentum cycles the other "
                               "way)", own_warmup=True))
register_schedule(ScheduleInfo("plateau", "multiply by --gamma when --monitor stops improving",
                               needs_validation=True))
register_schedule(ScheduleInfo("cosine-restarts", "cosine annealing with warm restarts every --t0 (x --t-mult) "
                               "epochs", defaults=_default_t0))
