"""Callbacks of the training loop (see :mod:`cnnctl.engine.callbacks.base` for the hooks and their order)."""

from __future__ import annotations

from cnnctl.engine.callbacks.base import Callback, CallbackList
from cnnctl.engine.callbacks.checkpoint_saver import CheckpointSaver
from cnnctl.engine.callbacks.early_stopping import EarlyStopping
from cnnctl.engine.callbacks.ema import ExponentialMovingAverage
from cnnctl.engine.callbacks.final_test import FinalTest
from cnnctl.engine.callbacks.metrics_csv import MetricsCsv
from cnnctl.engine.callbacks.plots import Plots
from cnnctl.engine.callbacks.precise_bn import PreciseBatchNorm
from cnnctl.engine.callbacks.progress import ProgressDisplay
from cnnctl.engine.callbacks.sanity_check import SanityCheck
from cnnctl.engine.callbacks.threads import ThreadGovernor

__all__ = ["Callback", "CallbackList", "default_callbacks"]


def default_callbacks() -> list[Callback]:
    """What every run has: precise BatchNorm statistics, progress display, sanity check, the weights' average
    (--ema), early stopping,
    checkpoints and state, metrics.csv, the final test and plots; CPU threads that follow the machine's load."""
    final_test = FinalTest()
    return [PreciseBatchNorm(), ProgressDisplay(), SanityCheck(), ExponentialMovingAverage(), EarlyStopping(),
            CheckpointSaver(), MetricsCsv(), final_test, Plots(final_test), ThreadGovernor()]
