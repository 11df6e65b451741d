"""User callbacks in the training loop (hooks, order, stopping, state across --resume, failures) and the run
folder's rules (lock before the state is read, stale temporaries, names, a run killed in its final test)."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

import pytest

import cnnctl
from cnnctl import checkpoint
from cnnctl.engine.callbacks import Callback
from cnnctl.engine.run_folder import run_lock
from cnnctl.engine.state import read_state
from cnnctl.errors import UsageError

OPTIONS = {"arch": "simplecnn", "dataset": "microdigits", "batch_size": 16, "lr": 0.01, "plots": False,
           "threads": 1, "scheduler": "none"}


class Recorder(Callback):
    """Records each hook, and what the run folder holds when on_epoch_end is called."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_fit_start(self, trainer) -> None:
        self.calls.append(("fit_start",))

    def on_epoch_start(self, trainer, epoch) -> None:
        self.calls.append(("epoch_start", epoch))

    def on_train_batch_end(self, trainer, step, loss) -> None:
        self.calls.append(("batch_end", step))

    def on_validation_end(self, trainer, epoch, metrics) -> None:
        self.calls.append(("validation_end", epoch, "val_acc" in metrics))

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        saved = checkpoint.read_meta(trainer.run_dir / "last.safetensors").epoch
        rows = (trainer.run_dir / "metrics.csv").read_text().count("\n") - 1
        self.calls.append(("epoch_end", epoch, saved, read_state(trainer.run_dir).state.epoch, rows))

    def on_fit_end(self, trainer, result) -> None:
        self.calls.append(("fit_end", result.test is not None))


def test_hooks_come_in_order_after_the_epoch_is_saved(micro_digits, tmp_path: Path) -> None:
    recorder = Recorder()
    cnnctl.train(epochs=2, out=str(tmp_path), callbacks=[recorder], **OPTIONS)
    steps = [("batch_end", step) for step in range(1, 6)]  # 80 training images, batches of 16
    assert recorder.calls == [
        ("fit_start",),
        ("epoch_start", 1), *steps, ("validation_end", 1, True), ("epoch_end", 1, 1, 1, 1),
        ("epoch_start", 2), *steps, ("validation_end", 2, True), ("epoch_end", 2, 2, 2, 2),
        ("fit_end", True),
    ]


class StopAt(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        if epoch == self.epoch:
            trainer.should_stop, trainer.stop_reason = True, f"asked to stop at epoch {epoch}"


def test_a_callback_stops_the_run_which_then_finishes(micro_digits, tmp_path: Path) -> None:
    result = cnnctl.train(epochs=5, out=str(tmp_path), callbacks=[StopAt(2)], **OPTIONS)
    assert [row["epoch"] for row in result.history] == [1, 2] and result.stopped_early
    assert json.loads((result.run_dir / "results.json").read_text()) == result.test
    assert result.test["test_count"] == 32


class EpochCounter(Callback):
    """Counts the epochs it saw (in on_validation_end, so the count is in each epoch's saved state)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_validation_end(self, trainer, epoch, metrics) -> None:
        self.seen.append(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = list(state["seen"])


def test_callback_state_survives_resume(micro_digits, tmp_path: Path) -> None:
    first = EpochCounter()
    run = cnnctl.train(epochs=2, out=str(tmp_path), callbacks=[first], **OPTIONS)
    assert read_state(run.run_dir).state.extra["callbacks"] == {f"{__name__}.EpochCounter": {"seen": [1, 2]}}
    second = EpochCounter()
    cnnctl.train(resume=run.run_dir, epochs=3, callbacks=[second])
    assert second.seen == [1, 2, 3]


class FailAt(Callback):
    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        if epoch == 2:
            raise RuntimeError("callback failed")


def test_a_failing_callback_leaves_a_resumable_run(micro_digits, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="callback failed"):
        cnnctl.train(epochs=3, out=str(tmp_path), name="failing", callbacks=[FailAt()], **OPTIONS)
    run_dir = tmp_path / "failing" / "1"
    assert read_state(run_dir).state.epoch == 2
    resumed = cnnctl.train(resume=run_dir)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3] and resumed.test is not None


def test_resume_takes_the_lock_before_reading_the_state(micro_digits, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnctl.data.splits as splits

    run = cnnctl.train(epochs=1, out=str(tmp_path), **OPTIONS)
    loads: list[bool] = []
    original = splits.load_split

    def load_split_checking_the_lock(*args: Any, **kwargs: Any) -> Any:
        with open(run.run_dir / ".lock") as handle:  # another open file: conflicts with the trainer's flock
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                loads.append(False)
            except BlockingIOError:
                loads.append(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(splits, "load_split", load_split_checking_the_lock)
    with run_lock(run.run_dir), pytest.raises(UsageError, match="being trained by another cnnctl process"):
        cnnctl.train(resume=run.run_dir, epochs=2)  # a second runner is refused before loading anything
    assert loads == []
    cnnctl.train(resume=run.run_dir, epochs=2)
    assert loads and all(loads)  # the data was loaded with the run locked


def test_resume_runs_a_final_test_that_was_killed(micro_digits, tmp_path: Path) -> None:
    run = cnnctl.train(epochs=1, out=str(tmp_path), **OPTIONS)
    expected = json.loads((run.run_dir / "results.json").read_text())
    (run.run_dir / "results.json").unlink()  # as after SIGKILL during the final test
    (run.run_dir / ".metrics.csv.abc123.tmp").write_text("half")  # what a kill during a write leaves
    (run.run_dir / ".state.safetensors.x9.tmp").write_bytes(b"half")
    finished = cnnctl.train(resume=run.run_dir)
    assert finished.test == expected == json.loads((run.run_dir / "results.json").read_text())
    assert not list(run.run_dir.glob(".*.tmp"))
    with pytest.raises(UsageError, match="already finished 1 of 1 epochs"):
        cnnctl.train(resume=run.run_dir)


def test_a_kill_while_the_first_state_is_written_is_told_as_it_is(micro_digits, tmp_path: Path) -> None:
    run = cnnctl.train(epochs=1, out=str(tmp_path), **OPTIONS)
    (run.run_dir / "state.safetensors").unlink()  # last/best of epoch 1 are written before the state
    with pytest.raises(UsageError, match="stopped while it saved its first epoch"):
        cnnctl.train(resume=run.run_dir)


def test_run_folder_names(micro_digits, tmp_path: Path) -> None:
    run = cnnctl.train(epochs=1, out=str(tmp_path / "out"), name="tv:simple", **OPTIONS)
    assert run.run_dir == tmp_path / "out" / "tv-simple" / "1"
    for name in ("../../escaped", str(tmp_path / "absolute")):
        with pytest.raises(UsageError, match="plain folder name|outside --out"):
            cnnctl.train(epochs=1, out=str(tmp_path / "out"), name=name, **OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


def test_a_second_ctrl_c_during_exit_prints_no_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "twice.py"
    script.write_text(
        "import atexit, os, signal\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))  # runs last: a Ctrl-C during the exit\n"
        "from cnnctl.engine.interrupt import InterruptGuard\n"
        "with InterruptGuard() as guard:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "assert guard.requested == signal.SIGINT\n"
        "raise SystemExit(130)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 130 and "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_a_dataset_with_its_own_prepare_and_eval_split(micro_digits, tmp_path: Path) -> None:
    """A DatasetSpec that brings its own prepare/eval_split (as the image folder does) is trained and evaluated
    through them, with nothing in the engine knowing its name."""
    import dataclasses

    import torch

    from cnnctl import registry
    from cnnctl.data.splits import PreparedData, load_split, resolve_preprocessing
    from cnnctl.engine.evaluate import evaluate_checkpoint

    calls: list[str] = []

    def prepare(config, model, log) -> PreparedData:
        calls.append("prepare")
        train, test = load_split(micro_digits, "train"), load_split(micro_digits, "test")
        preprocessing = resolve_preprocessing(model, (1, 28, 28), (0.5,), (0.25,))
        return PreparedData(train, None, test, micro_digits.classes, preprocessing, "ownprep")

    def eval_split(meta, split, **_: Any):
        calls.append(f"eval_split {split}")
        return load_split(micro_digits, "test").subset(torch.arange(8))

    spec = dataclasses.replace(micro_digits, name="ownprep", prepare=prepare, eval_split=eval_split)
    registry.register_dataset(spec)
    try:
        run = cnnctl.train(epochs=1, out=str(tmp_path), **{**OPTIONS, "dataset": "ownprep"})
        result, meta = evaluate_checkpoint(run.best_path, device="cpu")
    finally:
        registry._DATASETS.pop("ownprep", None)
    assert calls == ["prepare", "eval_split test"]
    assert meta.dataset == "ownprep" and meta.preprocessing.mean == (0.5,) and result.count == 8
    assert run.test["test_count"] == 32


def test_equal_validation_accuracies_are_ranked_by_validation_loss() -> None:
    from cnnctl.engine.tracking import MetricTracker

    tracker = MetricTracker(monitor="val_acc", keep=2)
    assert tracker.update(1, 1.0, 0.30)[0]  # first epoch: best
    assert tracker.update(2, 1.0, 0.10)[0]  # same accuracy, lower loss: the new best
    assert not tracker.update(3, 1.0, 0.20)[0]  # same accuracy, higher loss than the best
    assert not tracker.update(4, 0.9, 0.01)[0]  # lower accuracy, whatever its loss
    assert (tracker.best_epoch, tracker.bad_epochs) == (2, 3)  # patience counts only better accuracies
    assert [item["epoch"] for item in tracker.top] == [2, 3]
    by_loss = MetricTracker(monitor="val_loss")
    assert by_loss.tiebreak is None and by_loss.update(1, 0.5)[0] and not by_loss.update(2, 0.5)[0]


def test_best_checkpoint_is_the_lowest_loss_among_the_best_accuracies(micro_digits, tmp_path: Path) -> None:
    import csv

    run = cnnctl.train("lenet5", dataset="microdigits", epochs=6, out=str(tmp_path), plots=False, seed=0)
    with open(run.run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    top = max(float(row["val_acc"]) for row in rows)
    expected = min((float(row["val_loss"]), int(row["epoch"])) for row in rows if float(row["val_acc"]) == top)[1]
    _, meta = checkpoint.load(run.run_dir / "best.safetensors")
    assert meta.epoch == expected
