"""The learning-rate sweep behind ``cnnctl lr-find`` and ``--lr auto``: an exponential learning-rate sweep
(Smith, "Cyclical learning rates", 2017) and a suggested rate.

The model, data, augmentation and optimizer are built exactly as ``cnnctl train`` builds them from the same
options; then each of ``steps`` optimizer steps uses a rate ``start·(end/start)^(i/(steps−1))``. The loss is
smoothed with a bias-corrected exponential moving average (β = 0.98, as fastai does), and the sweep stops early
once the smoothed loss exceeds 4× its minimum (it diverged).

The suggestion: **the rate at the smoothed loss's minimum, divided by 10**. The rate of steepest descent, the
other common rule, reads a derivative of a noisy curve and moves by orders of magnitude between runs; the minimum
of the smoothed curve is stable, and a tenth of it is where the loss still falls fast but is well clear of the
rates that diverge. It is clamped into the swept range. The sweep is seeded by ``--seed``, so it repeats.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import unwrap
from cnnctl.engine.configure import complete_config
from cnnctl.engine.determinism import deterministic_mode
from cnnctl.errors import UsageError
from cnnctl.plots import _figure, _save
from cnnctl.progress import SilentReporter

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer
    from cnnctl.recipe.config import TrainConfig

SMOOTHING = 0.98
DIVERGED = 4.0
RULE = "the rate at the minimum of the smoothed loss (bias-corrected EMA, beta 0.98), divided by 10"


@dataclass
class LrFindResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float = math.nan
    rule: str = RULE
    stopped: str = ""  # why the sweep ended before its last step, if it did
    plot: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"suggested_lr": self.suggestion, "rule": self.rule, "steps": len(self.lrs), "stopped": self.stopped,
                "plot": str(self.plot) if self.plot else None, "lrs": self.lrs, "losses": self.losses,
                "smoothed": self.smoothed}


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """:data:`RULE`, clamped into ``[lrs[0], lrs[-1]]``."""
    best = min(range(len(smoothed)), key=lambda index: smoothed[index])
    return min(max(lrs[best] / 10, lrs[0]), lrs[-1])


def sweep_lr(trainer_class: type[Trainer], config: TrainConfig, *, start_lr: float = 1e-7, end_lr: float = 10.0,
             steps: int = 200, log: Any = None, after_setup: Callable[[Trainer], None] | None = None
             ) -> LrFindResult:
    """Sweep the learning rate for ``config``'s run (which is not changed, nor saved) with the training loop's
    own setup (``trainer_class``: the Trainer) and suggest one. ``after_setup(trainer)`` runs once the run is set
    up and before the first step (lr-find makes its plot's folder there, so that one it cannot write fails
    first)."""
    import torch


    if not 0 < start_lr < end_lr:
        raise UsageError(f"lr-find needs 0 < --start-lr < --end-lr, got {start_lr:g} and {end_lr:g}")
    if steps < 10:
        raise UsageError(f"lr-find needs at least 10 --steps, got {steps}")
    config = dataclasses.replace(config, lr=start_lr, ema=None, arch_args=dict(config.arch_args))
    trainer = trainer_class(config, _Messages(log) if log is not None else SilentReporter())
    complete_config(config)
    result = LrFindResult()
    with deterministic_mode(config.deterministic):
        trainer.setup()
        if after_setup is not None:
            after_setup(trainer)
        model, optimizer, scaler = trainer.model, trainer.optimizer, trainer.scaler
        model.train()
        batches, average, lowest = iter(trainer.train_batches), 0.0, math.inf
        for step in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            try:
                inputs, labels = next(batches)
            except StopIteration:  # a new epoch of the training split
                batches = iter(trainer.train_batches)
                inputs, labels = next(batches)
            with trainer.precision.autocast():
                loss = trainer.loss(model(inputs), labels, inputs, trainer.train_batches.batch_weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            value = float(loss.detach())
            if not math.isfinite(value):
                result.stopped = f"the loss was not finite at lr {lr:.3g}"
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smooth = average / (1 - SMOOTHING ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(value)
            result.smoothed.append(smooth)
            lowest = min(lowest, smooth)
            if step >= 10 and smooth > DIVERGED * lowest:
                result.stopped = f"the smoothed loss rose above {DIVERGED:g}× its minimum at lr {lr:.3g}"
                break
    if len(result.lrs) < 2:
        raise UsageError(f"lr-find could not sweep: {result.stopped}", hint="lower --start-lr")
    result.suggestion = suggest_lr(result.lrs, result.smoothed)
    return result


class _Messages:
    """A reporter that passes on only the setup's messages (the sweep has no epochs)."""

    def __init__(self, log: Any):
        self.log = log

    def message(self, text: str) -> None:
        self.log(text)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def plot_lr_find(result: LrFindResult, path: Path) -> Path:
    """Loss against learning rate (log scale): each step, the smoothed curve and the suggestion."""
    figure = _figure(7, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(result.lrs, result.losses, color="0.75", linewidth=0.8, label="loss per step")
    axes.plot(result.lrs, result.smoothed, color="C0", linewidth=1.8, label="smoothed")
    axes.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    top = max(result.smoothed[0], min(result.smoothed)) * 1.5
    axes.set_ylim(min(result.losses) * 0.9, top)
    axes.set_title("lr-find: " + RULE, fontsize=8)
    axes.legend(loc="upper left")
    figure.tight_layout()
    return _save(figure, path)


def resolve_auto_lr(trainer_class: type[Trainer], config: TrainConfig, log: Any) -> LrFindResult | None:
    """``--lr auto``: run the sweep with ``config``'s options and train with its suggestion; returns the sweep
    (the run draws it into its folder), or None without ``--lr auto``."""
    if config.lr != "auto":
        return None
    found = sweep_lr(trainer_class, dataclasses.replace(config, lr=None), log=None)
    config.lr = float(f"{found.suggestion:.3g}")
    log(f"--lr auto: lr-find suggests {config.lr:g} ({RULE}; {len(found.lrs)} steps)")
    return found
