"""The run folders under a directory (``cnnctl runs``): what each trained, how far it got, its best and test
numbers, and whether it finished, is running, was interrupted or crashed; and their learning curves side by side
(``cnnctl runs compare``).

Everything is read from the files a run writes (the training state's JSON header, ``results.json``,
``metrics.csv``, ``config.json``); nothing is loaded into torch. A run is *running* when a live process holds
its training lock (the OS releases it when the process dies, even after ``kill -9``), *interrupted* when it
stopped on a signal (``interrupted.json``, removed when it resumes), *finished* when its saved state is at the
end of training and its final test wrote ``results.json``, and *crashed* otherwise (killed, or stopped by an
error: ``cnnctl train --resume`` continues it). Listing a run that no process holds removes the temporary files a killed
process left half-written, with the engine's own helper.

It also finds checkpoints the way people name them: nothing (the latest run under ``./runs``), a run group
folder (``runs/lenet5-mnist``: its latest run), a run folder, or a ``.safetensors`` file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnctl import filekind, plots
from cnnctl.checkpoint.format import wrong_kind_error
from cnnctl.engine.run_folder import RunFolder
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.fsutil import require_writable_file
from cnnctl.plots import _figure, _percent
from cnnctl.recipe.resume import read_state_document
from cnnctl.registry import suggest

CHECKPOINT_FILES = ("best.safetensors", "last.safetensors")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl", ".pickle")
MODEL_SUFFIXES = (*PICKLE_SUFFIXES, ".onnx")  # model files of other formats: named and refused
DEFAULT_RUNS = "runs"


def checkpoint_in(folder: Path) -> Path | None:
    """The checkpoint a run folder is used by: best.safetensors, else last.safetensors."""
    for name in CHECKPOINT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _run_folders(root: Path, depth: int = 2) -> Iterator[Path]:
    """Run folders under ``root`` (itself included), at most ``depth`` levels down: runs/GROUP/N."""
    if checkpoint_in(root) is not None:
        yield root
        return
    if depth <= 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        yield from _run_folders(child, depth - 1)


def _saved_at(run: Path) -> float:
    return max((run / name).stat().st_mtime for name in CHECKPOINT_FILES if (run / name).is_file())


def latest_run(root: str | Path = DEFAULT_RUNS) -> Path | None:
    """The run under ``root`` whose checkpoint was written last, or None."""
    runs = list(_run_folders(Path(root)))
    return max(runs, key=_saved_at) if runs else None


def is_checkpoint_like(target: str | Path) -> bool:
    """Whether ``target`` names a checkpoint, run folder or run group (rather than, say, a folder of images)."""
    path = Path(target)
    if path.suffix == ".safetensors" or path.suffix.lower() in MODEL_SUFFIXES:
        return True
    if path.is_dir():
        return next(_run_folders(path), None) is not None
    return filekind.sniff(path) in (filekind.SAFETENSORS, filekind.ONNX, filekind.TORCHSCRIPT,
                                    filekind.TORCH_SAVE, filekind.PICKLE)


def resolve_checkpoint(target: str | None, *, runs: str | Path = DEFAULT_RUNS,
                       log: Callable[[str], None] | None = None) -> str:
    """The checkpoint file or run folder that ``target`` means, saying which when it was chosen for the user.

    None → the latest run under ``runs``; a folder holding runs → its latest run; a pickle file → refused with
    what to do instead; anything else is returned as given (the checkpoint reader reports what is wrong)."""
    if target is None:
        run = latest_run(runs)
        if run is None:
            raise UsageError(f"no checkpoint given and no run under ./{Path(runs)}",
                             hint="pass a .safetensors file or a run folder, or train one: cnnctl train lenet5")
        chosen = checkpoint_in(run)
        if log:
            log(f"using the latest run: {chosen}")
        return str(chosen)
    path = Path(target)
    if path.suffix.lower() in MODEL_SUFFIXES:  # another format's model: named, with what to pass instead
        kind = filekind.sniff(path) if path.is_file() else None  # missing: the suffix says what it would be
        if kind != filekind.SAFETENSORS:  # (a renamed cnnctl checkpoint is still read)
            if kind not in (filekind.ONNX, filekind.TORCHSCRIPT, filekind.TORCH_SAVE, filekind.PICKLE):
                kind = filekind.ONNX if path.suffix.lower() == ".onnx" else filekind.PICKLE
            error = wrong_kind_error(path, kind)
            if error is not None:
                raise error
    if path.is_dir() and checkpoint_in(path) is None:
        run = latest_run(path)
        if run is not None:
            chosen = checkpoint_in(run)
            if log:
                log(f"using the latest run in {target}: {chosen}")
            return str(chosen)
    return target


def completion_candidates(incomplete: str, runs: str | Path = DEFAULT_RUNS) -> list[str]:
    """Shell completion of a CHECKPOINT argument: run folders and .safetensors files that start with
    ``incomplete`` (the run folders under ./runs when nothing is typed yet)."""
    typed = Path(incomplete) if incomplete else None
    if typed is None or (incomplete.endswith("/") and typed.is_dir()):
        folder = typed or Path(".")
        prefix = ""
    else:
        folder, prefix = typed.parent, typed.name
    candidates = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.name.startswith("."):
            continue
        shown = str(entry) if folder != Path(".") or incomplete.startswith("./") else entry.name
        if entry.is_dir():
            candidates.append(shown + "/")
        elif entry.suffix == ".safetensors":
            candidates.append(shown)
    if not incomplete:
        candidates = [str(run) for run in _run_folders(Path(runs))] + candidates
    return candidates


# ---------------------------------------------------------------------------------------------- cnnctl runs
STATUSES = ("finished", "running", "interrupted", "crashed")
SORT_KEYS = ("run", "arch", "dataset", "epochs", "best", "val", "test", "time", "status")
_TRACKER_FOLDERS = {"mlartifacts", "mlruns"}  # MLflow's copies of run folders live beside them


@dataclass
class RunInfo:
    """One run folder as ``cnnctl runs`` shows it (``--json`` gives these fields)."""

    run: str  # the folder, relative to the listed directory
    path: str
    arch: str | None
    dataset: str | None
    epochs_done: int
    epochs_planned: int | None
    best_epoch: int | None
    monitor: str | None
    best_value: float | None
    test_acc: float | None
    time_s: float
    status: str
    stale_files_removed: int = 0
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("history")
        return data


def is_run_folder(path: Path) -> bool:
    """A folder ``cnnctl train`` made: its configuration, and a lock or a training state."""
    return (path / "config.json").is_file() and ((path / ".lock").is_file() or (path / "state.safetensors").is_file())


def find_run_folders(root: str | Path) -> list[Path]:
    """Every run folder under ``root`` (``root`` itself if it is one), in natural order (``2`` before ``10``)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder", hint="pass the folder that holds your runs (train's --out)")
    if is_run_folder(root):
        return [root]
    found = []
    for config in root.rglob("config.json"):
        folder = config.parent
        if is_run_folder(folder) and not _TRACKER_FOLDERS & set(folder.relative_to(root).parts):
            found.append(folder)
    return sorted(found, key=lambda path: natural_key(path.relative_to(root).as_posix()))


def natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@contextlib.contextmanager
def unless_training(folder: Path) -> Iterator[bool]:
    """Yields False when a live process holds the run's training lock; else True, holding a shared lock while
    inside, so that no trainer starts writing the folder while its temporary files are removed."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, a run is never known to be running
        yield True
        return
    try:
        handle = open(folder / ".lock", "rb")  # noqa: SIM115 - held for the block
    except FileNotFoundError:
        yield True
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_history(folder: Path) -> list[dict[str, float]]:
    """metrics.csv as numbers (one dict per epoch)."""
    try:
        text = (folder / "metrics.csv").read_text()
    except OSError:
        return []
    rows = []
    for row in csv.DictReader(text.splitlines()):
        parsed: dict[str, float] = {}
        for key, value in row.items():
            with contextlib.suppress(TypeError, ValueError):
                parsed[key] = float(value)
        rows.append(parsed)
    return rows


def read_run(folder: Path, root: Path) -> RunInfo:
    """What ``folder`` holds, and its status (removing stale temporary files when no process trains it)."""
    run = RunFolder(folder)
    config = _read_json(folder / "config.json") or {}
    with unless_training(folder) as free:
        removed = len(run.remove_stale_temp_files()) if free else 0
        try:
            state = read_state_document(folder)["state"]
        except CnnctlError:
            state = {}
        results = _read_json(run.results)
        if not free:
            status = "running"
        elif run.interrupted.is_file():
            status = "interrupted"
        elif results is not None and _training_ended(state):
            status = "finished"
        else:
            status = "crashed"
    saved_config = state.get("config") or config
    history = read_history(folder) or list(state.get("history", []))
    tracker = state.get("tracker") or {}
    dataset = Path(saved_config["data"]).name if saved_config.get("data") else saved_config.get("dataset")
    return RunInfo(
        run=folder.relative_to(root).as_posix() if folder != root else folder.name, path=str(folder),
        arch=saved_config.get("arch"), dataset=dataset, epochs_done=int(state.get("epoch", len(history))),
        epochs_planned=saved_config.get("epochs"),
        best_epoch=(results or {}).get("best_epoch", tracker.get("best_epoch")),
        monitor=tracker.get("monitor", saved_config.get("monitor")), best_value=tracker.get("best_value"),
        test_acc=(results or {}).get("test_acc"), time_s=_training_seconds(history, state),
        status=status, stale_files_removed=removed, history=history)


def _training_seconds(history: list[dict[str, float]], state: dict[str, Any]) -> float:
    """The time spent training: the finished epochs', and that of the epoch a signal stopped half-way (kept
    in the saved state; there is no metrics.csv row for it yet)."""
    finished = sum(row.get("epoch_time_s", 0.0) for row in history)
    partial = (state.get("partial") or {}).get("seconds", 0.0) if state.get("batch") else 0.0
    return finished + float(partial)


def _training_ended(state: dict[str, Any]) -> bool:
    """The saved state is at the end of training (all epochs, or stopped early): results.json is of this
    training, not of a shorter one that a resume with more epochs is extending."""
    if not state:
        return True  # a finished run whose state was deleted to save space
    planned = int((state.get("config") or {}).get("epochs", 0))
    return state.get("batch", 0) == 0 and (bool(state.get("stopped_early")) or int(state.get("epoch", 0)) >= planned)


def _sort_value(info: RunInfo, key: str) -> Any:
    """Ascending order of ``key``; the metrics best first (accuracy high, loss low); missing values last."""
    maximize = not (info.monitor or "").endswith("loss")
    values = {
        "run": natural_key(info.run), "arch": info.arch or "", "dataset": info.dataset or "",
        "epochs": info.epochs_done, "best": info.best_epoch if info.best_epoch is not None else -1,
        "val": None if info.best_value is None else (-info.best_value if maximize else info.best_value),
        "test": None if info.test_acc is None else -info.test_acc, "time": info.time_s,
        "status": STATUSES.index(info.status),
    }
    value = values[key]
    return (value is None, value if value is not None else 0)


def list_runs(root: str | Path = "runs", *, arch: str | None = None, dataset: str | None = None,
              status: str | None = None, sort: str = "run", reverse: bool = False) -> list[RunInfo]:
    """The run folders under ``root``, filtered (architecture, dataset, status) and sorted by ``sort``."""
    if sort not in SORT_KEYS:
        raise suggest(sort, list(SORT_KEYS), "sort column")
    if status is not None and status not in STATUSES:
        raise suggest(status, list(STATUSES), "status")
    root = Path(root)
    infos = [read_run(folder, root) for folder in find_run_folders(root)]
    infos = [info for info in infos if (arch is None or info.arch == arch)
             and (dataset is None or info.dataset == dataset) and (status is None or info.status == status)]
    return sorted(infos, key=lambda info: _sort_value(info, sort), reverse=reverse)


# ------------------------------------------------------------------------------------------------ compare
CURVES = (("train_loss", "train loss"), ("val_loss", "validation loss"), ("train_acc", "train accuracy"),
          ("val_acc", "validation accuracy"))


def resolve_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders from what the user named (a run folder, or a file inside one)."""
    folders = []
    for given in paths:
        path = Path(given)
        folder = path.parent if path.is_file() else path
        if is_run_folder(folder) and not (folder / "metrics.csv").is_file():
            raise UsageError(f"{given}: no epoch of this run has finished yet (it has no metrics.csv)",
                             hint="compare it once it has trained an epoch")
        if not folder.is_dir() or not (folder / "metrics.csv").is_file():
            raise UsageError(f"{given}: not a run folder with metrics (metrics.csv)",
                             hint="pass run folders written by `cnnctl train`, e.g. runs/lenet5-mnist/1")
        folders.append(folder)
    return folders


def run_labels(folders: Sequence[Path]) -> list[str]:
    """Short names: each folder from the run group on (``lenet5-mnist/1``, ``lenet5-mnist/2``), relative to the
    folder that holds all their groups."""
    import os

    resolved = [folder.resolve() for folder in folders]
    common = Path(os.path.commonpath([folder.parent.parent for folder in resolved]))
    labels = [folder.relative_to(common).as_posix() for folder in resolved]
    return [label if labels.count(label) == 1 else str(folder) for label, folder in zip(labels, folders)]


def comparison_figure(histories: Sequence[tuple[str, list[dict[str, float]]]]) -> Any:
    """A 2x2 figure (train/validation loss and accuracy per epoch) with one line per run, in the same colour in
    every panel."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(12, 8)
    axes = figure.subplots(2, 2)
    colours = [f"C{index % 10}" for index in range(len(histories))]
    for ax, (key, title) in zip(axes.flat, CURVES):
        for (label, history), colour in zip(histories, colours):
            points = [(row["epoch"], row[key]) for row in history if key in row and "epoch" in row]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=colour, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key.endswith("acc"):
            ax.yaxis.set_major_formatter(_percent())
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes.flat[2].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4) or 1, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    return figure


def compare_runs(paths: Sequence[str | Path], output: str | Path = "compare.png") -> Path:
    """Draw the runs' curves into one PNG (``output``); returns its path."""
    plots.require()
    target = require_writable_file(output, option="--output")
    folders = resolve_runs(paths)
    histories = list(zip(run_labels(folders), [read_history(folder) for folder in folders]))
    plots._save(comparison_figure(histories), target)
    return Path(output)
