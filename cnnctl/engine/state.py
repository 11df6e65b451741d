"""Training state for ``--resume``: one ``state.safetensors`` per run folder, written atomically, never pickled.

The file holds the tensors (model weights ``model.*``, optimizer state ``optimizer.<param>.<name>``, random-number
generator states ``rng.*``, a half-finished epoch's sums ``partial.*``) and, in its safetensors metadata under
``cnnctl_state``, one JSON document with everything else: epoch and batch reached, optimizer hyperparameters,
schedule and gradient-scaler state, best metric, early-stopping counters, history, Python's and NumPy's random
states and the resolved configuration. One file renamed into place is one commit: a crash leaves either the
previous state or the new one, never a mix (the weights are in it too, so it never depends on
``last.safetensors`` having been written at the same moment).
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import load_weights_strict, state_tensors, unwrap
from cnnctl.engine.tracking import MetricTracker
from cnnctl.errors import CheckpointError, first_line
from cnnctl.fsutil import atomic_path
from cnnctl.progress import plural
from cnnctl.recipe.resume import STATE_FILE, STATE_FORMAT, STATE_KEY, TrainingState, read_state_document

if TYPE_CHECKING:
    import torch

    from cnnctl.engine.fit import Trainer


# ---------------------------------------------------------------------------------------------- optimizer state
def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` as named tensors plus a JSON-able rest (hyperparameters, non-tensor state)."""
    import torch

    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                plain.setdefault(str(param_id), {})[name] = value
    groups = []
    for group in state_dict["param_groups"]:
        tuples = sorted(key for key, value in group.items() if isinstance(value, tuple))
        groups.append({**{key: list(value) if isinstance(value, tuple) else value for key, value in group.items()},
                       "__tuples__": tuples})
    return tensors, {"param_groups": groups, "plain_state": plain}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer`: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = tensor
    for param_id, entries in document.get("plain_state", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    groups = []
    for group in document["param_groups"]:
        group = dict(group)
        tuples = group.pop("__tuples__", [])
        groups.append({key: tuple(value) if key in tuples else value for key, value in group.items()})
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------- random states
def capture_rng(loader_generator_state: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random-number state a run draws from: torch (CPU and CUDA), the batch loader's generator
    (shuffling and augmentation), Python's ``random`` and NumPy's legacy global state."""
    import torch

    tensors = {"rng.torch": torch.get_rng_state(), "rng.loader": loader_generator_state.clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = cuda_state
    version, internal, gauss = random.getstate()
    document: dict[str, Any] = {"python": [version, list(internal), gauss]}
    with contextlib.suppress(ImportError):
        import numpy as np

        name, keys, position, has_gauss, cached = np.random.get_state()
        document["numpy"] = [name, [int(k) for k in keys], int(position), int(has_gauss), float(cached)]
    return tensors, document


def restore_rng(tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> None:
    """Restore the global states captured by :func:`capture_rng` (the loader's is restored by the trainer)."""
    import torch

    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((int(key.rsplit(".", 1)[1]), value) for key, value in tensors.items() if key.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([value for _, value in cuda][: torch.cuda.device_count()])
    if "python" in document:
        version, internal, gauss = document["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in document:
        with contextlib.suppress(ImportError):
            import numpy as np

            name, keys, position, has_gauss, cached = document["numpy"]
            np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))


# ---------------------------------------------------------------------------------------------- the file
def write_state(run_dir: Path, tensors: dict[str, torch.Tensor], state: TrainingState,
                rng_document: dict[str, Any], optimizer_document: dict[str, Any]) -> Path:
    """Write ``state.safetensors`` atomically (temporary file, fsync, rename)."""
    from safetensors.torch import save_file

    document = {"format": STATE_FORMAT, "state": state.__dict__, "rng": rng_document, "optimizer": optimizer_document}
    path = run_dir / STATE_FILE
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(document)})
    return path


@dataclass
class LoadedState:
    state: TrainingState
    tensors: dict[str, Any]
    rng: dict[str, Any]
    optimizer: dict[str, Any]

    def model_tensors(self) -> dict[str, Any]:
        return {key[len("model."):]: value for key, value in self.tensors.items() if key.startswith("model.")}


def read_state(run_dir: Path) -> LoadedState:
    from safetensors.torch import load_file

    document = read_state_document(run_dir)
    path = run_dir / STATE_FILE
    try:
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - a damaged body raises safetensors' own types
        raise CheckpointError(f"{path} is not a readable training state ({first_line(error, 120)})",
                              hint="it may be damaged; start the run again") from error
    return LoadedState(TrainingState(**document["state"]), tensors, document.get("rng", {}),
                       document.get("optimizer", {}))


# ---------------------------------------------------------------------------------------------- the trainer's state
def save_training_state(trainer: Trainer, epoch: int, batch: int, loader_state: torch.Tensor,
                        partial: dict[str, Any] | None = None) -> None:
    """``state.safetensors``: ``epoch`` finished epochs plus ``batch`` batches of the next (with its sums, all
    ranks' together), and every callback's ``state_dict()``. Rank 0 only."""
    if not trainer.dist.is_main:
        return
    tensors = {f"model.{name}": tensor for name, tensor in state_tensors(trainer.model).items()}
    if trainer.averaged is not None:  # --ema
        tensors.update({f"averaged.{name}": tensor.detach().to("cpu").contiguous().clone()
                        for name, tensor in trainer.averaged.state_dict().items()})  # module.* and n_averaged
    optimizer_tensors, optimizer_document = flatten_optimizer(trainer.optimizer)
    rng_tensors, rng_document = capture_rng(loader_state)
    tensors.update(optimizer_tensors)
    tensors.update(rng_tensors)
    partial_document: dict[str, float] = {}
    if partial:
        tensors["partial.loss_sum"] = partial["loss_sum"].detach().to("cpu").clone()
        tensors["partial.correct"] = partial["correct"].detach().to("cpu").clone()
        partial_document = {"seen": partial["seen"], "seconds": partial["seconds"]}
    extra = dict(trainer.state_extra)
    callback_states = trainer.callbacks.state_dict()
    if callback_states:
        extra["callbacks"] = callback_states
    if trainer.stop_reason:
        extra["stop_reason"] = trainer.stop_reason
    state = TrainingState(epoch=epoch, batch=batch, history=trainer.history, tracker=trainer.tracker.to_dict(),
                          schedule=trainer.schedule.state_dict(), scaler=trainer.scaler.state_dict(),
                          partial=partial_document, stopped_early=trainer.should_stop,
                          config=trainer.config.to_dict(), extra=extra)
    write_state(trainer.run_dir, tensors, state, rng_document, optimizer_document)


def restore_training_state(trainer: Trainer, loaded: LoadedState) -> None:
    """Put model, optimizer, schedule, scaler, counters, callbacks and every random-number state back as saved."""
    source = str(trainer.run_dir / STATE_FILE)
    state = loaded.state
    load_weights_strict(unwrap(trainer.model), loaded.model_tensors(), source=source)
    if trainer.averaged is not None:  # --ema
        averaged = {key[len("averaged."):]: value for key, value in loaded.tensors.items()
                    if key.startswith("averaged.")}
        load_weights_strict(trainer.averaged, averaged, source=source)
    try:
        trainer.optimizer.load_state_dict(unflatten_optimizer(loaded.tensors, loaded.optimizer))
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{source}: its optimizer state does not fit this model ({error})") from error
    trainer.schedule.load_state_dict(state.schedule)
    if state.scaler:
        trainer.scaler.load_state_dict(state.scaler)
    trainer.tracker = MetricTracker.from_dict(state.tracker)
    trainer.tracker.keep = trainer.config.keep
    trainer.history = list(state.history)
    trainer.start_epoch, trainer.start_batch = state.epoch, state.batch
    extra = dict(state.extra)
    trainer.callbacks.load_state_dict(extra.pop("callbacks", {}))
    extra.pop("stop_reason", None)
    trainer.state_extra = extra
    if state.batch:
        trainer.partial = {**state.partial, "loss_sum": loaded.tensors["partial.loss_sum"].to(trainer.device),
                           "correct": loaded.tensors["partial.correct"].to(trainer.device)}
        if not trainer.dist.is_main:  # the saved sums are all ranks' together: rank 0 carries them on
            trainer.partial.update(loss_sum=trainer.partial["loss_sum"] * 0,
                                   correct=trainer.partial["correct"] * 0, seen=0)
    restore_rng(loaded.tensors, loaded.rng)
    trainer.train_batches.generator.set_state(loaded.tensors["rng.loader"])
    trainer.reporter.message(resume_message(trainer.run_dir, state.epoch, state.batch, len(trainer.train_batches),
                                            trainer.config.epochs))


def resume_message(run_dir: Path, done: int, batch: int, steps: int, epochs: int) -> str:
    """Where a resumed run goes on, counted as the interruption message counts (epochs from 1): ``done``
    finished epochs and ``batch`` batches of the next."""
    where = (f"in epoch {done + 1} after batch {batch} of {steps}" if batch
             else f"after epoch {done}, with epoch {done + 1}")
    return f"resuming {run_dir} {where} (training to {plural(epochs, 'epoch')})"
