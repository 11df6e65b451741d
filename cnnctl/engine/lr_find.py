"""``cnnctl lr-find`` and ``cnnctl.engine.lr_find.lr_find``: the sweep (:mod:`cnnctl.engine.lr_sweep`) run with
the training loop's own setup, and its plot. It sits above the loop it reuses; ``--lr auto`` calls the sweep from
the loop itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import plots
from cnnctl.engine.fit import Trainer
from cnnctl.engine.lr_sweep import RULE, LrFindResult, plot_lr_find, suggest_lr, sweep_lr
from cnnctl.engine.run_folder import run_name
from cnnctl.errors import UsageError
from cnnctl.recipe.commands import LR_FIND

if TYPE_CHECKING:
    from cnnctl.recipe.config import TrainConfig

__all__ = ["RULE", "LrFindResult", "lr_find", "plot_lr_find", "suggest_lr"]


_SWEEP = {option.name: option.default for option in LR_FIND}  # the defaults `cnnctl lr-find` shows


def lr_find(config: TrainConfig, *, start_lr: float = _SWEEP["start_lr"], end_lr: float = _SWEEP["end_lr"],
            steps: int = _SWEEP["steps"], plot: str | Path | bool | None = None, log: Any = None) -> LrFindResult:
    """Sweep the learning rate for ``config``'s run (which is not changed, nor saved) and suggest one. ``plot``:
    a PNG path, or True for ``lr-find.png`` beside the run folders that ``cnnctl train`` with the same options
    makes (``OUT/NAME/``, the sweep's own run), or None/False for no plot."""
    if plot:
        plots.require()
    plot_path: list[Path] = []

    def choose_plot_path(trainer: Trainer) -> None:  # once the run's default name is known, before the sweep
        if plot:
            plot_path.append(beside_runs(trainer.config, trainer.default_name) if plot is True else Path(plot))

    result = sweep_lr(Trainer, config, start_lr=start_lr, end_lr=end_lr, steps=steps, log=log,
                      after_setup=choose_plot_path)
    if plot_path:
        result.plot = plot_lr_find(result, plot_path[0])
    return result


def beside_runs(config: TrainConfig, default_name: str) -> Path:
    """``OUT/NAME/lr-find.png``: next to the numbered run folders ``cnnctl train`` makes with these options
    (the folder is made now, before the sweep, so that a folder that cannot be written fails first)."""
    folder = Path(config.out) / run_name(config.name or default_name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot write lr-find.png into {folder}: {error.strerror or error}",
                         hint="pass --out DIR, or --plot PNG for another place") from None
    return folder / "lr-find.png"
