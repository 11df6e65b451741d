"""Resume and crash safety: an interrupted or extended run ends with exactly the weights of an uninterrupted one
(CPU, same seed), whether it stopped at an epoch's end, on Ctrl-C in the middle of an epoch, or on SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cnnctl
from cnnctl import checkpoint
from cnnctl.engine.interrupt import TrainingInterrupted
from cnnctl.engine.state import read_state
from cnnctl.errors import UsageError
from cnnctl.progress import Reporter

TESTS = Path(__file__).parent
# dropout draws from torch's global generator, augmentation from the loader's: both must be restored
OPTIONS = {"arch": "simplecnn", "dataset": "microdigits", "batch_size": 16, "lr": 0.01, "augment": "shift",
           "arch_args": {"dropout": 0.3}, "plots": False, "threads": 1, "deterministic": True}
TIMING = {"epoch_time_s", "images_per_s"}


def metrics(run_dir: Path) -> list[dict[str, str]]:
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_and_extend_equal_an_uninterrupted_run(micro_digits, tmp_path: Path) -> None:
    options = {**OPTIONS, "optimizer": "sgd", "nesterov": True, "scheduler": "multistep", "milestones": [3, 5],
               "keep": 2}
    straight = cnnctl.train(epochs=6, out=str(tmp_path / "a"), **options)

    first = cnnctl.train(epochs=2, out=str(tmp_path / "b"), **options)
    run_dir = first.run_dir
    assert read_state(run_dir).state.epoch == 2
    resumed = cnnctl.train(resume=run_dir, epochs=4)  # 2 → 4: the run's own plan was 2 epochs
    assert resumed.run_dir == run_dir and len(resumed.history) == 4
    assert metrics(run_dir) == metrics(straight.run_dir)[:4]
    with pytest.raises(UsageError, match="already finished 4 of 4 epochs"):
        cnnctl.train(resume=run_dir)
    extended = cnnctl.train(resume=run_dir / "last.safetensors", epochs=6)  # a finished run, extended
    assert [row["epoch"] for row in extended.history] == [1, 2, 3, 4, 5, 6]

    assert metrics(run_dir) == metrics(straight.run_dir)
    for name in ("last.safetensors", "state.safetensors"):
        a, b = load_file(str(run_dir / name)), load_file(str(straight.run_dir / name))
        assert all(torch.equal(a[key], b[key]) for key in a if not key.startswith("rng.cuda")), name
    assert_same_weights(run_dir / "best.safetensors", straight.run_dir / "best.safetensors")
    assert extended.test == straight.test
    # the two best epochs are kept, and only those
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == sorted(p.name for p in (straight.run_dir / "checkpoints").iterdir()) and len(kept) == 2
    assert checkpoint.read_meta(run_dir / "best.safetensors").epoch == extended.test["best_epoch"]


class InterruptAt(Reporter):
    """Sends this process a real SIGINT after step ``step`` of epoch ``epoch`` (like pressing Ctrl-C)."""

    def __init__(self, epoch: int, step: int):
        self.target = (epoch, step)
        self.epoch = 0

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch = epoch

    def step(self, step: int, loss) -> None:
        if (self.epoch, step) == self.target:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(micro_digits, tmp_path: Path) -> None:
    options = {**OPTIONS, "epochs": 3}  # the default schedule: onecycle, stepped per batch
    straight = cnnctl.train(out=str(tmp_path / "a"), **options)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's handler, in a job started in the background
    with pytest.raises(TrainingInterrupted) as caught:
        cnnctl.train(out=str(tmp_path / "b"), reporter=InterruptAt(epoch=2, step=3), **options)
    run_dir = tmp_path / "b" / "simplecnn-microdigits" / "1"
    assert caught.value.exit_code == 130
    assert "in epoch 2 after batch 3 of 5" in str(caught.value)
    assert f"cnnctl train --resume {run_dir}" in str(caught.value)
    state = read_state(run_dir).state
    assert (state.epoch, state.batch) == (1, 3)
    assert checkpoint.read_meta(run_dir / "last.safetensors").epoch == 1  # last = the last finished epoch
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back

    resumed = cnnctl.train(resume=run_dir)
    assert metrics(run_dir) == metrics(straight.run_dir)
    assert_same_weights(run_dir / "last.safetensors", straight.run_dir / "last.safetensors")
    assert resumed.test == straight.test


# ------------------------------------------------------------------------------------------------ subprocesses
CHILD = """
import sys
sys.path.insert(0, {tests!r})
from conftest import DIGIT_CLASSES, _micro_loader
from cnnctl import registry
from cnnctl.registry import DatasetSpec
registry.datasets()
registry.register_dataset(DatasetSpec(
    name="microdigits", description="", classes=DIGIT_CLASSES[:4], image_shape=(1, 28, 28), mean=(0.13,),
    std=(0.31,), train_size=2000, test_size=32, loader=_micro_loader({{"train": 2000, "test": 32}}),
    default_val_split=16))
from cnnctl.cli import main
main(sys.argv[1:])
"""
CLI_OPTIONS = ["--dataset", "microdigits", "--batch-size", "16", "--augment", "shift", "--threads", "1",
               "--deterministic", "--no-plots", "--epochs", "4"]


def child(*args: str, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CNNCTL_DATA": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(TESTS)), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(process: subprocess.Popen[str], prefix: str) -> None:
    for line in process.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line {prefix!r}; stderr: {process.stderr.read()}")


def test_sigkill_mid_epoch_then_resume_finishes_the_run(micro_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    process = child("train", "simplecnn", *CLI_OPTIONS, "--out", str(out), tmp_path=tmp_path)
    wait_for_line(process, "epoch 2/4")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    run_dir = out / "simplecnn-microdigits" / "1"
    state = read_state(run_dir).state
    assert 2 <= state.epoch < 4 and state.batch == 0  # killed inside epoch 3 or 4: that epoch is lost
    assert checkpoint.read_meta(run_dir / "last.safetensors").epoch == state.epoch
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes: no temporary file is left visible in use

    # resume in this process through the CLI, with the same 2000-image dataset the child had
    from dataclasses import replace

    from conftest import _micro_loader
    from typer.testing import CliRunner

    from cnnctl import registry
    from cnnctl.cli import app

    registry._DATASETS["microdigits"] = replace(micro_digits, loader=_micro_loader({"train": 2000, "test": 32}))
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming {run_dir} after epoch {state.epoch}" in resumed.stderr
    assert [int(row["epoch"]) for row in metrics(run_dir)] == [1, 2, 3, 4]
    model, meta = checkpoint.load(run_dir / "best.safetensors")
    assert meta.arch == "simplecnn" and 1 <= meta.epoch <= 4
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_count"] == 32 and results["test_acc"] >= 0.75

    straight = cnnctl.train(arch="simplecnn", dataset="microdigits", epochs=4, batch_size=16, augment="shift",
                            threads=1, deterministic=True, plots=False, out=str(tmp_path / "straight"))
    assert metrics(run_dir) == metrics(straight.run_dir)
    assert_same_weights(run_dir / "last.safetensors", straight.last_path)


def test_sigint_exits_130_with_the_resume_command(micro_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    process = child("train", "simplecnn", *CLI_OPTIONS, "--out", str(out), tmp_path=tmp_path)
    wait_for_line(process, "epoch 1/4")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    run_dir = out / "simplecnn-microdigits" / "1"
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted") and last.endswith(f"continue with: cnnctl train --resume {run_dir}")
    assert "Traceback" not in stderr
    state = read_state(run_dir).state
    assert state.epoch >= 1 and (state.epoch, state.batch) != (4, 0)
