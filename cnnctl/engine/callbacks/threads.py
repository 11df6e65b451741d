"""CPU threads that follow the machine: while training on the CPU with the default ``--threads``, every few
seconds the work of other processes on this process's CPUs is measured and the thread count lowered (or raised
again) to the CPUs left free (see :mod:`cnnctl.engine.threads`). Two trainings started together on the same
cores thus settle on sharing them instead of both taking every core."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cnnctl.engine.callbacks.base import Callback
from cnnctl.engine.threads import OthersMeter, adjust_threads

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer

INTERVAL_S = 8.0


class ThreadGovernor(Callback):
    def __init__(self, interval_s: float = INTERVAL_S):
        self.interval_s = interval_s
        self.meter: Any = None
        self.next_check = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        choice = trainer.thread_choice
        if choice is None:  # --threads given, a GPU, or one of several processes
            self.meter = None
            return
        self.meter = OthersMeter()
        self.usable = choice.usable
        self.next_check = time.monotonic() + self.interval_s

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        if self.meter is None or time.monotonic() < self.next_check:
            return
        import torch

        self.next_check = time.monotonic() + self.interval_s
        others = self.meter.others()
        if others is None:
            self.meter = None  # no /proc/stat: keep the start's choice
            return
        others *= self.usable / max(len(self.meter.cpus) or self.usable, 1)
        current = torch.get_num_threads()
        wanted = adjust_threads(current, self.usable, others)
        if wanted != current:
            torch.set_num_threads(wanted)
            trainer.reporter.message(f"CPU threads {current} → {wanted}: other processes keep about {others:.1f} "
                                     f"of the {self.usable} CPUs this run may use busy")
