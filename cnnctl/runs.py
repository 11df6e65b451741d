"""Finding checkpoints the way people name them: nothing (the latest run under ``./runs``), a run group folder
(``runs/lenet5-mnist``: its latest run), a run folder, or a ``.safetensors`` file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from cnnctl.errors import CheckpointError, UsageError

CHECKPOINT_FILES = ("best.safetensors", "last.safetensors")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl", ".pickle")
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
    if path.suffix == ".safetensors" or path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    return path.is_dir() and next(_run_folders(path), None) is not None


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
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{target} is a PyTorch pickle file: cnnctl never unpickles files (loading one can run any code it "
            "holds); it evaluates, predicts with and exports its own .safetensors checkpoints",
            hint=f"to start training from these weights: cnnctl train ARCH --pretrained {target}")
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
