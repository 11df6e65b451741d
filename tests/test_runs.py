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


class Messages(InterruptAt):
    """Records what training says (and, like InterruptAt, can press Ctrl-C at a step)."""

    def __init__(self, epoch: int = 0, step: int = 0):
        super().__init__(epoch, step)
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


def test_an_epoch_stopped_half_way_has_its_time_and_resumes_counting_as_ctrl_c_did(micro_digits,
                                                                                  tmp_path: Path) -> None:
    from cnnctl.engine.state import read_state

    out = tmp_path / "runs"
    with pytest.raises(TrainingInterrupted) as caught:
        cnnctl.train(epochs=2, out=str(out), reporter=Messages(epoch=1, step=3), **OPTIONS)
    assert "interrupted in epoch 1 after batch 3 of 5" in str(caught.value)
    run_dir = out / "simplecnn-microdigits" / "1"
    row = listed(str(out))[0]["simplecnn-microdigits/1"]
    assert row["status"] == "interrupted" and not (run_dir / "metrics.csv").exists()
    assert row["time_s"] == read_state(run_dir).state.partial["seconds"] > 0  # the half epoch's time, not 0
    table = CliRunner().invoke(app, ["runs", str(out)])
    assert " 0s " not in table.stdout and ("<1s" in table.stdout or "s interrupted" in table.stdout), table.stdout

    resumed = Messages()
    cnnctl.train(resume=run_dir, reporter=resumed)
    assert f"resuming {run_dir} in epoch 1 after batch 3 of 5 (training to 2 epochs)" in resumed.messages
    assert listed(str(out))[0]["simplecnn-microdigits/1"]["status"] == "finished"


def test_a_folder_without_test_split_finishes_in_a_group_named_after_it(tmp_path: Path) -> None:
    from dataset_files import write_image_folder

    from cnnctl.engine.runs import resolve_checkpoint

    photos = tmp_path / "my photos"
    write_image_folder(photos, ("cats", "dogs"), 20, size=16, seed=2)
    out = tmp_path / "runs"
    options = {"data": str(photos), "batch_size": 8, "out": str(out), "plots": False, "threads": 1}
    run = cnnctl.train("simplecnn", epochs=1, **options)
    assert run.run_dir == out / "simplecnn-my-photos" / "1"  # the folder's name, made safe for a folder
    assert run.test is None and run.results["split"] == "val" and run.results["val_count"] == 4
    assert json.loads((run.run_dir / "results.json").read_text()) == run.results
    no_val = cnnctl.train("simplecnn", epochs=1, val_split=0, **options)
    results = json.loads((no_val.run_dir / "results.json").read_text())
    assert (results["split"], results["best_epoch"], results["monitor"]) == (None, 1, "train_acc")

    old_group = out / "simplecnn-folder" / "1"  # how earlier versions named every folder's runs
    old_group.parent.mkdir()
    shutil.copytree(run.run_dir, old_group)
    runs, _ = listed(str(out))
    assert {name: (row["status"], row["dataset"]) for name, row in runs.items()} == {
        "simplecnn-folder/1": ("finished", "my photos"), "simplecnn-my-photos/1": ("finished", "my photos"),
        "simplecnn-my-photos/2": ("finished", "my photos")}
    assert resolve_checkpoint(str(out / "simplecnn-folder")) == str(old_group / "best.safetensors")
    evaluated = CliRunner().invoke(app, ["eval", str(out / "simplecnn-folder"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(run.results["val_acc"], abs=1e-12)


@pytest.mark.parametrize(("data_dir", "expected"), [
    ("photos", "lenet5-photos"), ("my photos/", "lenet5-my-photos"), ("./a/b/Cats & Dogs", "lenet5-Cats-Dogs"),
    (None, "lenet5-mnist")])
def test_default_run_names(data_dir: str | None, expected: str) -> None:
    from cnnctl.engine.run_folder import default_run_name, run_name

    name = default_run_name("lenet5", "folder" if data_dir else "mnist", data_dir)
    assert name == expected and run_name(name) == name
