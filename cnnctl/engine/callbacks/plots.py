"""curves.png, lr-find.png (with ``--lr auto``), and from the final evaluation (the test split, else the
validation split) confusion.png and predictions.png (``--no-plots`` skips them). Rank 0 only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnctl import plots
from cnnctl.engine.callbacks.base import Callback
from cnnctl.engine.callbacks.final_test import FinalTest
from cnnctl.engine.lr_sweep import plot_lr_find

if TYPE_CHECKING:
    from cnnctl.engine.fit import FitResult, Trainer


class Plots(Callback):
    order = -10  # after the final test

    def __init__(self, final_test: FinalTest):
        self.final_test = final_test

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        if not (trainer.config.plots and trainer.dist.is_main):
            return
        missing = plots.available()
        if missing:
            trainer.reporter.message(missing)
            return
        trainer.reporter.phase("plotting")
        result.plots = [plots.plot_curves(trainer.history, trainer.run_dir / "curves.png")]
        if trainer.lr_sweep is not None:  # --lr auto
            result.plots.append(plot_lr_find(trainer.lr_sweep, trainer.run_dir / "lr-find.png"))
        if self.final_test.evaluation is not None:  # the test split's, or the validation split's without one
            model, evaluation, images, split = self.final_test.evaluation
            data = trainer.data
            result.plots += plots.evaluation_plots(trainer.run_dir, model, images, data.preprocessing,
                                                   list(data.classes), evaluation.confusion, split=split)
