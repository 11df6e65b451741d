"""A run folder: the names of its files in one place, created exclusively, locked while a process trains it.

``out/<name>/<n>/`` holds ``last.safetensors``, ``best.safetensors``, ``state.safetensors`` (what ``--resume``
needs), ``metrics.csv``, ``config.yaml``/``config.json``, ``results.json``, the top-K copies under
``checkpoints/`` and the plots. Every file is written atomically (a temporary ``.<name>.XXXX.tmp`` beside it,
then a rename), so a killed process leaves at most such temporaries, which the next resume removes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePath

from cnnctl.errors import UsageError
from cnnctl.fsutil import atomic_write_text
from cnnctl.recipe.resume import STATE_FILE


def run_name(name: str) -> str:
    """The folder name for ``--name`` (or the default ARCH-DATASET): ``:`` becomes ``-`` (``tv:resnet18`` →
    ``tv-resnet18``; colons break scp, rsync and Windows), and it must stay inside ``--out``."""
    cleaned = name.strip().replace(":", "-")
    parts = PurePath(cleaned).parts
    if not parts or PurePath(cleaned).is_absolute() or ".." in parts or cleaned.startswith(("/", "\\", "~")):
        raise UsageError(f"--name {name!r} would put the run outside --out",
                         hint="pass a plain folder name such as --name my-run (no '..', not an absolute path)")
    return cleaned


def default_run_name(arch: str, dataset: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The run group of a run without ``--name``: ``ARCH-DATASET``, or for a folder of images ``ARCH-<its
    name>`` (``lenet5-digits``), so that runs on different folders land in different groups. Characters a
    folder name may hold but a run name should not (spaces, quotes, ...) become ``-``."""
    label = dataset
    if data_dir:
        import re

        name = Path(os.path.abspath(os.path.expanduser(os.fspath(data_dir)))).name
        label = re.sub(r"[^\w.+-]+", "-", name).strip("-.") or dataset
    return f"{arch}-{label}"


class RunFolder:
    """The files of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, out: str | Path, name: str) -> RunFolder:
        """``out/name/<n>`` with the next free n, created exclusively: two runs never share a folder."""
        parent = Path(out) / run_name(name)
        parent.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name) for p in parent.iterdir() if p.name.isdigit()]
        number = max(numbers, default=0) + 1
        while True:
            candidate = parent / str(number)
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                number += 1

    @property
    def last(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def state(self) -> Path:
        return self.path / STATE_FILE

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def interrupted(self) -> Path:
        """Written when training stopped on a signal (Ctrl-C, SIGTERM), removed when the run resumes: what tells
        an interrupted run from a crashed one (``cnnctl runs``)."""
        return self.path / "interrupted.json"

    def mark_interrupted(self, reason: str) -> None:
        if not (self.path / "config.json").is_file():  # no run folder yet (interrupted during setup)
            return
        import json
        import time

        atomic_write_text(self.interrupted, json.dumps({"reason": reason, "time": time.time()}) + "\n")

    def top(self, epoch: int) -> Path:
        """The kept copy of epoch ``epoch`` (``--keep K`` > 1)."""
        return self.checkpoints / f"epoch-{epoch:03d}.safetensors"

    def remove_stale_temp_files(self) -> list[Path]:
        """Temporary files a killed process left half-written (nothing refers to them)."""
        stale = [path for folder in (self.path, self.checkpoints) if folder.is_dir()
                 for path in folder.glob(".*.tmp") if path.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def remove_orphan_top_checkpoints(self, kept_epochs: list[int]) -> None:
        """Top-K files a crash left behind (written, but not recorded in the state)."""
        if not self.checkpoints.is_dir():
            return
        kept = {self.top(epoch).name for epoch in kept_epochs}
        for path in self.checkpoints.glob("epoch-*.safetensors"):
            if path.name not in kept:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder while training, so that two processes never write one run (a
        second ``--resume`` of a run still training fails at once). Released by the OS even after ``kill -9``."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the folder is still created exclusively
            yield
            return
        handle = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the whole block
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                raise UsageError(f"{self.path} is being trained by another cnnctl process",
                                 hint="wait for it to finish, or stop it first") from error
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            handle.close()


def create_run_dir(out: str | Path, name: str) -> Path:
    """``out/name/<n>``, the next free one, created exclusively (see :meth:`RunFolder.create`)."""
    return RunFolder.create(out, name).path


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The exclusive training lock of ``run_dir`` (see :meth:`RunFolder.lock`)."""
    return RunFolder(run_dir).lock()
