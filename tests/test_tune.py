"""``cnnctl tune``: real Optuna studies over tiny trainings (lenet5, tinydigits, 1-3 epochs). Each trial is an
ordinary run folder; the study lives in SQLite, shared by worker processes and continued after Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import optuna
import pytest
from test_distributed import CHILD, TESTS
from test_docs_examples import python_blocks, tiny_mnist  # noqa: F401  (the fixture: MNIST as tiny digits)
from test_training_options import one_line_error
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.recipe.config_file import build_train_config

runner = CliRunner()
# 400 training images, 200 validation: a trial trains in well under a second per epoch on one thread
TRIAL = ["lenet5", "--dataset", "tinydigits", "--limit", "400", "--batch-size", "32", "--no-plots", "--threads", "1",
         "--device", "cpu"]


def tune(*args: str):
    return runner.invoke(app, ["tune", *args])


def trial_dir(tune_dir: Path, number: int) -> Path:
    """Trial K's run folder: the one run of the run group ``trial-K`` in the search folder."""
    return tune_dir / f"trial-{number}" / "1"


def epochs_trained(run_dir: Path) -> list[dict[str, str]]:
    """The run's own metrics.csv, one row per epoch."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def best_val(run_dir: Path, monitor: str = "val_acc") -> float:
    return max(float(row[monitor]) for row in epochs_trained(run_dir))


def load_study(tune_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=None, storage=f"sqlite:///{tune_dir / 'optuna.db'}")


def start_script(tmp_path: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    """``cnnctl ARGS`` in a child process that knows ``tinydigits`` (so do the workers it starts)."""
    script = tmp_path / "cnnctl_with_tinydigits.py"
    script.write_text(CHILD.format(tests=str(TESTS)))
    return subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)


def test_a_tiny_search_finishes_and_its_best_config_trains_again(tiny_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = tune(*TRIAL, "--epochs", "2", "--out", str(out), "--trials", "4", "--json",
                  "--param", "lr=loguniform:1e-4:3e-3", "--param", "batch_size=choice:32,64", "--pruner", "none")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    tune_dir = out / "tune-lenet5-tinydigits"
    assert summary["tune_dir"] == str(tune_dir) and summary["objective_split"] == "validation"
    assert [row["trial"] for row in summary["trials"]] == [0, 1, 2, 3]
    for row in summary["trials"]:
        run_dir = Path(row["run_dir"])
        assert run_dir == trial_dir(tune_dir, row["trial"]) and row["state"] == "complete"
        assert row["value"] == pytest.approx(best_val(run_dir))  # the objective is the run's best validation value
        assert json.loads((run_dir / "trial.json").read_text())["state"] == "complete"
        assert set(row["params"]) == {"lr", "batch_size"} and 1e-4 <= row["params"]["lr"] <= 3e-3
        written = build_train_config({}, run_dir / "config.yaml")
        assert (written.lr, written.batch_size) == (row["params"]["lr"], row["params"]["batch_size"])
    best = max(summary["trials"], key=lambda row: row["value"])
    assert summary["best"]["trial"] == best["trial"]
    assert "best trial" in result.stderr and "cnnctl train --config" in result.stderr
    for name in ("history.png", "importance.png"):
        assert matplotlib.image.imread(tune_dir / name).shape[0] > 100
    # best.yaml trains the best trial again, into the usual run folders, to the same validation accuracy
    again = cnnctl.train(build_train_config({}, tune_dir / "best.yaml"))
    assert again.run_dir.parent == out / "lenet5-tinydigits"
    assert max(row["val_acc"] for row in again.history) == pytest.approx(best["value"])
    # a trial folder is an ordinary run: eval reproduces its test accuracy
    evaluated = runner.invoke(app, ["eval", str(trial_dir(tune_dir, 0)), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads((trial_dir(tune_dir, 0) / "results.json").read_text())
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(results["test_acc"])


def test_hopeless_values_are_pruned_and_their_folders_say_so(tiny_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = tune(*TRIAL, "--epochs", "2", "--out", str(out), "--trials", "5", "--json", "--pruner", "median",
                  "--pruner-startup", "1", "--param", "lr=choice:0.005,10", "--grad-clip", "1")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["trials"]
    pruned = [row for row in rows if row["state"] == "pruned"]
    assert pruned, rows
    for row in pruned:
        run_dir = Path(row["run_dir"])
        assert row["params"]["lr"] == 10 and row["epochs"] < 2
        saying = json.loads((run_dir / "trial.json").read_text())
        assert saying["state"] == "pruned" and saying["pruned_at_epoch"] == row["epochs"]
        assert len(epochs_trained(run_dir)) == row["epochs"]  # it stopped training
        assert (run_dir / "results.json").is_file()  # and ended as a normal run
    good = [row for row in rows if row["params"]["lr"] == 0.005]
    assert good and all(row["state"] == "complete" for row in good)


def test_a_trial_that_fails_is_recorded_and_the_search_goes_on(tiny_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = tune(*TRIAL, "--epochs", "1", "--out", str(out), "--trials", "3", "--json", "--pruner", "none",
                  "--optimizer", "sgd", "--scheduler", "none", "--param", "lr=choice:0.01,1e12")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["trials"]
    assert len(rows) == 3 and {row["params"]["lr"] for row in rows} == {0.01, 1e12}, rows
    for row in rows:
        if row["params"]["lr"] == 1e12:  # the loss overflows: the trial fails with the run's own message
            assert row["state"] == "failed" and "diverged" in row["error"]
            assert json.loads((Path(row["run_dir"]) / "trial.json").read_text())["state"] == "failed"
        else:
            assert row["state"] == "complete" and row["value"] > 0


def test_two_workers_share_one_sqlite_study(tiny_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    process = start_script(tmp_path, "tune", *TRIAL, "--epochs", "1", "--out", str(out), "--trials", "4",
                           "--workers", "2", "--quiet", "--json", "--param", "lr=loguniform:1e-3:3e-2")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    tune_dir = out / "tune-lenet5-tinydigits"
    trials = load_study(tune_dir).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 2, workers  # both processes ran trials ...
    assert sorted(p.name for p in tune_dir.glob("trial-*")) == [f"trial-{n}" for n in range(4)]  # ... never the same
    assert [row["trial"] for row in json.loads(stdout)["trials"]] == [0, 1, 2, 3]


def test_ctrl_c_then_resume_finishes_without_repeating_trials(tiny_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    tune_dir = out / "tune-lenet5-tinydigits"
    process = start_script(tmp_path, "tune", *TRIAL, "--epochs", "5", "--out", str(out), "--trials", "3",
                           "--pruner", "none", "--param", "lr=loguniform:1e-3:3e-2")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait for the first finished trial, and the second started
        time.sleep(0.05)
        if (trial_dir(tune_dir, 1) / "metrics.csv").is_file():
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"cnnctl tune --resume {tune_dir}" in stderr
    before = {t.number: t for t in load_study(tune_dir).get_trials()}
    finished = {n: t for n, t in before.items() if t.state == optuna.trial.TrialState.COMPLETE}
    assert 0 in finished
    interrupted = [n for n, t in before.items() if "interrupted" in t.user_attrs]
    assert interrupted == [1], before  # stopped in the middle of trial 1's epochs, saved
    metrics_before = {n: (trial_dir(tune_dir, n) / "metrics.csv").read_text() for n in finished}

    result = tune("--resume", str(tune_dir), "--json")
    assert result.exit_code == 0, result.output
    after = load_study(tune_dir).get_trials()
    complete = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    for number, trial in finished.items():  # finished trials are kept as they were, not trained again
        assert after[number].datetime_complete == trial.datetime_complete
        assert (trial_dir(tune_dir, number) / "metrics.csv").read_text() == metrics_before[number]
    for number in interrupted:  # an interrupted trial continues in its own folder, to all its epochs
        continued = [t for t in complete if t.user_attrs.get("continues_trial") == number]
        assert len(continued) == 1 and continued[0].params == before[number].params
        assert continued[0].user_attrs["run_dir"] == str(trial_dir(tune_dir, number))
        assert len(epochs_trained(trial_dir(tune_dir, number))) == 5
    assert len({t.user_attrs["run_dir"] for t in complete}) == 3


@pytest.mark.parametrize(("args", "fragments"), [
    (["--param", "lrr=loguniform:1e-4:1e-1"], ["lrr", "did you mean lr?"]),
    (["--param", "lr=loguniform:1e-1:1e-4"], ["--param lr", "is empty"]),
    (["--param", "weight_decay=uniform:1e-3:1e-3"], ["is empty"]),
    (["--param", "optimizer=choice:"], ["the choice is empty"]),
    (["--param", "nesterov=choice:fast,slow"], ["nesterov", "must be true or false"]),
    (["--param", "amp=uniform:0:1"], ["amp", "on/off flag", "choice:true,false"]),
    (["--param", "batch_size=uniform:16:64"], ["batch_size", "whole numbers"]),
    (["--param", "lr=uniform:0:1"], ["--param lr", "0 cannot be trained", "--lr must be positive"]),
    (["--param", "monitor=choice:val_acc,val_loss"], ["monitor", "cannot be searched"]),
    (["--param", "lr=loguniform:1e-4:1e-1", "--storage", "sqlite:////nonexistent-folder/study.db"],
     ["--storage", "does not exist"]),
    (["--param", "lr=loguniform:1e-4:1e-1", "--storage", "postgresql://tuner@127.0.0.1:9/study"],
     ["--storage postgresql://tuner@127.0.0.1:9/study"]),
    (["--param", "lr=loguniform:1e-4:1e-1", "--storage", "not a url"], ["not a database URL"]),
    (["--param", "lr=loguniform:1e-4:1e-1", "--frobnicate", "3"], ["--frobnicate", "not a `cnnctl train` option"]),
    (["--param", "lr=loguniform:1e-4:1e-1", "--nproc", "2"], ["--nproc", "--workers"]),
    (["--param", "lr=loguniform:1e-4:1e-1", "--val-split", "0"], ["validation split"]),
    ([], ["nothing to search"]),
])
def test_bad_input_is_one_line_before_any_trial(tiny_digits, tmp_path: Path, args: list[str],
                                                fragments: list[str]) -> None:
    out = tmp_path / "runs"
    one_line_error(tune(*TRIAL, "--out", str(out), "--trials", "2", *args), *fragments)
    assert not list(out.glob("tune-*/trial-*"))  # nothing trained
    assert not out.exists() or "storage" not in " ".join(args) or not list(out.iterdir())


def test_tune_help_imports_neither_torch_nor_optuna() -> None:
    code = ("import sys\nfrom cnnctl.cli import main\ntry:\n    main(['tune', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules, 'optuna' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--param" in result.stdout and result.stdout.strip().endswith("False False"), result.stdout


@pytest.mark.usefixtures("tiny_mnist")
def test_the_python_example_of_the_tune_document_runs() -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    for number, code in enumerate(python_blocks("docs/tune.md"), start=1):
        exec(compile(code, f"docs/tune.md (python block {number})", "exec"), namespace)  # noqa: S102
    summary = namespace["summary"]
    assert [row["state"] for row in summary["trials"]] == ["complete"] * 4  # type: ignore[index]
    best = max(summary["trials"], key=lambda row: row["value"])  # type: ignore[index]
    assert summary["best"]["trial"] == best["trial"]  # type: ignore[index]
    assert Path(summary["best"]["config"]).is_file()  # type: ignore[index]


def test_without_optuna_the_command_says_how_to_install_it(tiny_digits, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails as if it were not installed
    one_line_error(tune(*TRIAL, "--out", str(tmp_path / "runs"), "--param", "lr=loguniform:1e-4:1e-1"),
                   "needs Optuna", "pip install 'cnnctl[tune]'")
