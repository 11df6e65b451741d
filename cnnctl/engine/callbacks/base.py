"""Callbacks: what happens around the training loop (display, files, stopping rules) without being in it.

The loop calls every hook of every callback in ``order`` (lower first; user callbacks have 0):

- ``on_fit_start(trainer)`` once, after setup (and after a resume restored the run), before the first epoch;
- ``on_epoch_start(trainer, epoch)``; ``on_train_batch_end(trainer, step, loss)`` after each optimizer step
  (``step`` counts from 1 within the epoch, ``loss`` is that batch's loss tensor);
- ``on_validation_end(trainer, epoch, metrics)`` when the epoch's row is complete (training and validation
  numbers), before it is saved: the checkpoint saver runs last here, so what callbacks decide now (stop, state)
  is in the epoch's saved state;
- ``on_epoch_end(trainer, epoch, metrics)`` after the epoch's checkpoints, state and metrics.csv are written
  (``metrics`` is that epoch's metrics.csv row);
- ``on_fit_end(trainer, result)`` when training ended normally (the final test and plots come first).

A callback ends training after the current epoch with ``trainer.should_stop = True`` (and says why in
``trainer.stop_reason``); the run then finishes as usual. ``state_dict()`` (JSON-able) is saved in the training
state at each epoch's end and given back to ``load_state_dict`` when the run is resumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError

if TYPE_CHECKING:
    from cnnctl.engine.fit import FitResult, Trainer


class Callback:
    """No-op hooks to override. Callbacks read ``trainer.config``, ``.run_dir``, ``.model``, ``.history``,
    ``.device``, ``.data``."""

    order = 0

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None: ...

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CallbackList(Callback):
    """Dispatches each hook to its callbacks in ``order`` (stable: equal orders keep the given order)."""

    def __init__(self, callbacks: Iterable[Callback]):
        callbacks = list(callbacks)
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise UsageError(f"callbacks must be cnnctl.engine.callbacks.Callback instances, got "
                                 f"{type(callback).__name__}")
        self.callbacks = sorted(callbacks, key=lambda callback: callback.order)

    def on_fit_start(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(trainer)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(trainer, epoch)

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        for callback in self.callbacks:
            callback.on_train_batch_end(trainer, step, loss)

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_validation_end(trainer, epoch, metrics)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(trainer, epoch, metrics)

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        for callback in self.callbacks:
            callback.on_fit_end(trainer, result)

    def _keys(self) -> list[str]:
        """A stable name per callback for the saved state: its class, numbered when a class appears twice."""
        keys: list[str] = []
        for callback in self.callbacks:
            name = f"{type(callback).__module__}.{type(callback).__qualname__}"
            keys.append(name if name not in keys else f"{name}#{sum(k.split('#')[0] == name for k in keys) + 1}")
        return keys

    def state_dict(self) -> dict[str, Any]:
        states = {key: callback.state_dict() for key, callback in zip(self._keys(), self.callbacks, strict=True)}
        return {key: state for key, state in states.items() if state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, callback in zip(self._keys(), self.callbacks, strict=True):
            if key in state:
                callback.load_state_dict(state[key])
