"""``cnnctl runs``: real runs that finished, were interrupted (SIGINT), are running (a live process holds the
lock) and crashed (SIGKILL mid-training) are labelled so, with their numbers from the run folder's own files;
and ``cnnctl runs compare`` draws one line per run."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import CLI_OPTIONS, InterruptAt, child, wait_for_line
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.engine.interrupt import TrainingInterrupted

OPTIONS = {"arch": "simplecnn", "dataset": "microdigits", "batch_size": 16, "lr": 0.01, "plots": False,
           "threads": 1, "scheduler": "none"}
HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(120)
"""


def listed(*args: str) -> tuple[dict[str, dict], str]:
    result = CliRunner().invoke(app, ["runs", *args, "--json"])
    assert result.exit_code == 0, result.output
    return {row["run"]: row for row in json.loads(result.stdout)}, result.stderr


def val_accuracies(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(row["val_acc"]) for row in csv.DictReader(handle)]


def test_runs_labels_finished_interrupted_running_and_crashed(micro_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    killed = child("train", "simplecnn", *CLI_OPTIONS, "--out", str(out), "--name", "killed", tmp_path=tmp_path)
    stopped = child("train", "simplecnn", *CLI_OPTIONS, "--out", str(out), "--name", "stopped", tmp_path=tmp_path)
    done = cnnctl.train(epochs=2, out=str(out), name="done", **OPTIONS)
    wait_for_line(killed, "epoch 1/4")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    wait_for_line(stopped, "epoch 1/4")
    stopped.send_signal(signal.SIGINT)
    stopped.communicate(timeout=120)
    assert stopped.returncode == 130
    busy = out / "busy" / "1"
    shutil.copytree(done.run_dir, busy)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(busy / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        stale = [out / "killed" / "1" / ".last.safetensors.k3x9.tmp", busy / ".state.safetensors.a1b2.tmp"]
        for path in stale:
            path.write_bytes(b"half-written")

        runs, messages = listed(str(out))
        assert {name: row["status"] for name, row in runs.items()} == {
            "busy/1": "running", "done/1": "finished", "killed/1": "crashed", "stopped/1": "interrupted"}
        assert not stale[0].exists() and stale[1].exists()  # a running run's temporaries are in use
        assert messages.strip() == "killed/1: removed 1 temporary file(s) a killed process left"
        results = json.loads((done.run_dir / "results.json").read_text())
        row = runs["done/1"]
        assert (row["arch"], row["dataset"], row["epochs_done"], row["epochs_planned"]) == (
            "simplecnn", "microdigits", 2, 2)
        assert row["best_value"] == max(val_accuracies(done.run_dir))
        assert row["best_epoch"] == results["best_epoch"] and row["test_acc"] == results["test_acc"]
        assert runs["killed/1"]["epochs_done"] in (1, 2) and runs["killed/1"]["epochs_planned"] == 4
        assert runs["killed/1"]["test_acc"] is None

        assert list(listed(str(out), "--status", "crashed")[0]) == ["killed/1"]
        assert list(listed(str(out), "--dataset", "nope")[0]) == []
        assert len(listed(str(out), "--arch", "simplecnn")[0]) == 4
        by_test = list(listed(str(out), "--sort", "test")[0])
        assert set(by_test[:2]) == {"busy/1", "done/1"}  # the runs with a test result first
        done_epochs = [row["epochs_done"] for row in listed(str(out), "--sort", "epochs", "--reverse")[0].values()]
        assert done_epochs == sorted(done_epochs, reverse=True)
        assert [row["status"] for row in listed(str(out), "--sort", "status")[0].values()] == [
            "finished", "running", "interrupted", "crashed"]

        table = CliRunner().invoke(app, ["runs", str(out)], env={"COLUMNS": "80"})
        assert table.exit_code == 0
        lines = table.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        for name, status in (("busy/1", "running"), ("stopped/1", "interrupted"), ("killed/1", "crashed")):
            assert any(line.startswith(name) and line.rstrip().endswith(status) for line in lines), table.stdout
    finally:
        holder.kill()
        holder.wait()
    assert listed(str(out), "--status", "finished")[0].keys() == {"busy/1", "done/1"}  # the lock went with it


def test_an_interrupted_run_resumes_to_finished_and_compare_draws_one_line_per_run(micro_digits,
                                                                                   tmp_path: Path) -> None:
    import numpy as np
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    from cnnctl.engine.runs import comparison_figure, read_history, run_labels

    out = tmp_path / "runs"
    first = cnnctl.train(epochs=2, out=str(out), **OPTIONS)
    with pytest.raises(TrainingInterrupted):
        cnnctl.train(epochs=3, out=str(out), reporter=InterruptAt(epoch=2, step=2), **{**OPTIONS, "lr": 0.02})
    second = out / "simplecnn-microdigits" / "2"
    assert listed(str(out))[0]["simplecnn-microdigits/2"]["status"] == "interrupted"
    cnnctl.train(resume=second)
    assert not (second / "interrupted.json").exists()
    assert listed(str(out))[0]["simplecnn-microdigits/2"]["status"] == "finished"

    png = tmp_path / "both.png"
    result = CliRunner().invoke(app, ["runs", "compare", str(first.run_dir), str(second), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(png)
    image = imread(png)[..., :3]
    assert image.shape[:2] == (800, 1200)
    for colour in ("C0", "C1"):  # each run's line is drawn in its own colour
        assert (np.abs(image - np.array(to_rgb(colour))).max(axis=2) < 0.02).sum() > 200

    folders = [first.run_dir, second]
    figure = comparison_figure(list(zip(run_labels(folders), [read_history(f) for f in folders])))
    val_axis = figure.axes[3]
    assert val_axis.get_title() == "validation accuracy"
    assert [line.get_label() for line in val_axis.lines] == ["simplecnn-microdigits/1", "simplecnn-microdigits/2"]
    assert [list(line.get_ydata()) for line in val_axis.lines] == [val_accuracies(f) for f in folders]
    assert [len(line.get_xdata()) for line in val_axis.lines] == [2, 3]

    bad = CliRunner().invoke(app, ["runs", "compare", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "not a run folder" in bad.stderr and "Traceback" not in bad.output
