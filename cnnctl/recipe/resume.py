"""The rules of ``--resume``: which run folder it names, what the saved state document says (read from the JSON
header of ``state.safetensors``, never its tensors), and the configuration a resumed run continues with.

The tensors of the state (weights, optimizer, random-number generators) are written and put back by
cnnctl/engine/state.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnctl.errors import CheckpointError, UsageError, first_line
from cnnctl.recipe.config import TrainConfig
from cnnctl.recipe.options import RESUMABLE, coerce_mapping, label
from cnnctl.registry import get_model_spec

STATE_FILE = "state.safetensors"
STATE_KEY = "cnnctl_state"
STATE_FORMAT = 1


@dataclass
class TrainingState:
    """Where a run is: ``epoch`` epochs finished and ``batch`` batches of the next one (0 at an epoch's end)."""

    epoch: int = 0
    batch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    tracker: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    partial: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # for other parts of the engine (e.g. freeze phases)


def read_state_document(run_dir: Path) -> dict[str, Any]:
    """The state file's JSON header (state, configuration, random-number and optimizer scalars), without loading
    its tensors: what checking a resume needs."""
    from safetensors import safe_open

    path = run_dir / STATE_FILE
    try:
        with open(path, "rb"):  # safetensors reports an unreadable file as a missing one
            pass
    except PermissionError as error:
        raise CheckpointError(f"cannot read the training state {path}: permission denied",
                              hint="check the permissions of the run folder and its files") from error
    except OSError:
        pass  # reported below, as before
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        document = json.loads(metadata[STATE_KEY])
    except FileNotFoundError as error:
        raise CheckpointError(f"{run_dir} has no training state ({STATE_FILE})",
                              hint="the run stopped before its first epoch ended; start it again") from error
    except Exception as error:  # safetensors raises its own types for a damaged header
        raise CheckpointError(f"{path} is not a readable training state ({first_line(error, 120)})",
                              hint="it may be damaged; start the run again") from error
    if document.get("format", 0) > STATE_FORMAT:
        raise CheckpointError(f"{path} was written by a newer cnnctl (format {document['format']})",
                              hint="upgrade cnnctl")
    return document


def resolve_run_dir(path: str | Path) -> Path:
    """The run folder that ``--resume PATH`` names: the folder itself, or the folder of its last checkpoint."""
    path = Path(path)
    if path.is_dir():
        run_dir = path
    elif path.is_file():
        if path.name == "best.safetensors":
            raise UsageError(f"{path} is the best checkpoint, not where the run stopped",
                             hint=f"resume from the run folder: --resume {path.parent}")
        run_dir = path.parent
    else:
        raise UsageError(f"--resume {path}: no such run folder or checkpoint")
    if not (run_dir / STATE_FILE).is_file():
        if (run_dir / "last.safetensors").is_file():  # the state is written after the epoch's checkpoints
            raise UsageError(f"--resume {path}: {run_dir} holds no training state ({STATE_FILE}): the run was "
                             "stopped while it saved its first epoch (last.safetensors has that epoch's weights, "
                             "but not the optimizer and schedule a resume needs)", hint="start the run again")
        hint = ("the run stopped before its first epoch ended; start it again" if (run_dir / "config.json").is_file()
                else "pass a run folder written by `cnnctl train`")
        raise UsageError(f"--resume {path}: {run_dir} holds no training state ({STATE_FILE})", hint=hint)
    return run_dir


def training_ended(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` trained all its epochs (or stopped early) but has no results.json: it was
    killed during the final test, which a resume then runs."""
    if (run_dir / "results.json").is_file():
        return False
    state = TrainingState(**read_state_document(run_dir)["state"])
    return state.batch == 0 and (state.stopped_early or state.epoch >= int(state.config.get("epochs", 0)))


def resume_settings(run_dir: Path, overrides: dict[str, Any], log: Any) -> TrainConfig:
    """:func:`resume_config`, except that a run killed during its final test (training ended, results.json
    missing) resumes to run that test rather than being refused as finished."""
    done = int(read_state_document(run_dir)["state"]["epoch"])
    train_on = int(overrides.get("epochs") or 0) > done or overrides.get("patience") is not None
    if train_on or not training_ended(run_dir):
        return resume_config(run_dir, overrides)
    config = resume_config(run_dir, {**overrides, "epochs": done}, final_test_only=True)  # no epoch left to train
    log(f"{run_dir}: training ended but its final test did not (results.json is missing); running it now")
    return config


def resume_config(run_dir: Path, overrides: dict[str, Any], *, final_test_only: bool = False) -> TrainConfig:
    """The run's saved configuration with the options a resumed run may change (those declared ``resumable`` in
    cnnctl/recipe/options.py); anything else that differs from the saved value is a contradiction and says so before
    any work starts. ``overrides`` are keyed by option name (``data``, ``dropout``; older names are accepted).
    ``final_test_only``: the run's training has ended and only its final test is left, so a finished run is what
    is expected, not refused."""
    state = TrainingState(**read_state_document(run_dir)["state"])
    source = str(run_dir / STATE_FILE)
    saved = TrainConfig.from_dict(dict(state.config), source=source).to_dict()  # old spellings → option names
    overrides = coerce_mapping(overrides, "the options")
    if "arch_args" in overrides and "dropout" in (overrides["arch_args"] or {}):
        overrides["dropout"] = overrides.pop("arch_args")["dropout"]
    for name, value in overrides.items():
        if name in RESUMABLE or value is None or saved.get(name) == value:
            continue
        if name == "arch":
            if get_model_spec(value).name == saved.get("arch"):
                continue
            raise UsageError(f"--resume {run_dir}: the run trains {saved.get('arch')}, not {value}",
                             hint="resume without naming an architecture, or start a new run")
        raise UsageError(f"--resume continues {run_dir} with its own settings; {label(name)} cannot change "
                         f"(the run has {saved.get(name)!r}, given {value!r})",
                         hint="leave it out, or start a new run with --config " + str(run_dir / "config.yaml"))
    merged = {**saved, **{k: v for k, v in overrides.items() if k in RESUMABLE and v is not None}}
    config = TrainConfig.from_dict(merged, source=source)
    done = state.epoch
    if final_test_only:
        return config
    if state.batch == 0 and done >= config.epochs:
        raise UsageError(f"{run_dir} has already finished {done} of {config.epochs} epochs",
                         hint=f"pass {label('epochs')} N with N > {done} to train it further")
    if state.stopped_early and state.batch == 0 and not {"epochs", "patience"} & set(overrides):
        raise UsageError(f"{run_dir} stopped early after epoch {done} ({config.monitor} did not improve for "
                         f"{config.patience} epochs)",
                         hint=f"pass a larger {label('patience')} or {label('epochs')} to train on")
    if config.epochs < done:
        raise UsageError(f"{label('epochs')} {config.epochs} is fewer than the {done} epochs {run_dir} has already "
                         "trained")
    return config
