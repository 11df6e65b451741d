"""``cnnctl lr-find`` and ``cnnctl.engine.lr_find.lr_find``: the sweep (:mod:`cnnctl.engine.lr_sweep`) run with
the training loop's own setup, and its plot. It sits above the loop it reuses; ``--lr auto`` calls the sweep from
the loop itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import plots
from cnnctl.engine.fit import Trainer
from cnnctl.engine.lr_sweep import RULE, LrFindResult, suggest_lr, sweep_lr
from cnnctl.plots import _figure, _save

if TYPE_CHECKING:
    from cnnctl.config import TrainConfig

__all__ = ["RULE", "LrFindResult", "lr_find", "plot_lr_find", "suggest_lr"]


def lr_find(config: TrainConfig, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
            plot: str | Path | None = None, log: Any = None) -> LrFindResult:
    """Sweep the learning rate for ``config``'s run (which is not changed, nor saved) and suggest one."""
    if plot is not None:
        plots.require()
    result = sweep_lr(Trainer, config, start_lr=start_lr, end_lr=end_lr, steps=steps, log=log)
    if plot is not None:
        result.plot = plot_lr_find(result, Path(plot))
    return result


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
