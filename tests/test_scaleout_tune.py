"""``cnnctl tune`` on a real PostgreSQL server (tests/services.py): separate ``cnnctl tune`` processes, each with its
own search folder as on separate machines, share one study through the server. Tiny trials on real MNIST digits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from real_mnist import write_mnist_folder
from services import PG_PASSWORD, free_port
from typer.testing import CliRunner

from cnnctl.cli import app

GRACE_S = 3  # CNNCTL_TUNE_GRACE_S: a killed worker's trial is "lost" after 3 s without a heartbeat


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 training images of the real digits 0-3 (40 held out for validation), 40 test images."""
    return write_mnist_folder(tmp_path_factory.mktemp("digits"), train_per_class=40, test_per_class=10)


def search_args(digits: Path, out: Path, trials: int) -> list[str]:
    """The same command on every machine; only --out (each machine's own disk) differs."""
    return ["tune", "lenet5", "--data", str(digits), "--val-split", "40", "--epochs", "8", "--batch-size", "20",
            "--no-plots", "--threads", "1", "--device", "cpu", "--name", "shared", "--trials", str(trials),
            "--param", "lr=loguniform:1e-5:1e-1", "--pruner-startup", "2", "--out", str(out), "-q"]


def start(args: list[str], url: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CNNCTL_TUNE_STORAGE": url, "CNNCTL_TUNE_GRACE_S": str(GRACE_S), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cnnctl", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def finish(process: subprocess.Popen[str], timeout: float = 180) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out, err


def ran(stderr: str) -> list[int]:
    """The trial numbers a process says it ran (``trial K complete: ...``, ``trial K pruned: ...``)."""
    return [int(line.split()[1]) for line in stderr.splitlines()
            if line.startswith("trial ") and line.split()[2].rstrip(":") in ("complete", "pruned", "failed")]


def table_rows(table: str) -> list[list[str]]:
    """The table's rows as cells (trial, state, value, lr, epochs, time), without the best trial's star."""
    return [[cell.strip().rstrip(" *") for cell in line.strip("│").split("│")]
            for line in table.splitlines() if line.startswith("│")]


def test_three_machines_share_one_postgres_study(postgres, digits: Path, tmp_path: Path) -> None:
    url = postgres.create_database("tune_shared")
    # The first four trials' learning rates are fixed (learning, not pruned: the median has good values to
    # compare with); the TPE sampler draws the rest.
    study = optuna.create_study(study_name="shared", storage=url, direction="maximize")
    for lr in (3e-3, 5e-3, 1e-2, 2e-2):
        study.enqueue_trial({"lr": lr})

    machines = {name: tmp_path / name for name in ("a", "b", "c", "d")}
    started = time.monotonic()
    processes = {name: start(search_args(digits, machines[name], 6), url, tmp_path) for name in "abc"}
    outputs = {name: finish(process) for name, process in processes.items()}
    first_phase = time.monotonic() - started

    # each of the 6 trials ran exactly once, in one of the three processes, into that machine's own folder
    by_machine = {name: ran(err) for name, (_, err) in outputs.items()}
    numbers = sorted(n for trials in by_machine.values() for n in trials)
    assert numbers == [0, 1, 2, 3, 4, 5], by_machine
    assert sum(1 for trials in by_machine.values() if trials) >= 2, by_machine  # the work was shared
    for name, trials in by_machine.items():
        for number in trials:
            assert (machines[name] / "tune-shared" / f"trial-{number}" / "1" / "results.json").is_file()
            assert not any((machines[other] / "tune-shared" / f"trial-{number}").exists()
                           for other in "abc" if other != name)
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2
    for _, err in outputs.values():  # every process ends with the table of the whole study
        assert "Traceback" not in err

    # a fourth machine joins with 2 more trials: the first (queued, a learning rate too small to learn anything
    # in one epoch) is pruned against the trials the other machines completed; the second is killed (kill -9:
    # a lost machine) after its first epoch is saved
    study.enqueue_trial({"lr": 1e-5})
    study.enqueue_trial({"lr": 1e-2})
    d_tune = machines["d"] / "tune-shared"
    killed = start(search_args(digits, machines["d"], 8), url, tmp_path)
    state = d_tune / "trial-7" / "1" / "state.safetensors"
    deadline = time.monotonic() + 120
    while not state.is_file():
        assert killed.poll() is None, killed.communicate()[1]
        assert time.monotonic() < deadline, "trial 7 never saved an epoch"
        time.sleep(0.002)
    # stopped at once, then killed: the 7 epochs after the first leave a wide margin to land mid-trial
    os.killpg(killed.pid, signal.SIGSTOP)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert not (d_tune / "trial-7" / "1" / "results.json").exists()  # killed mid-trial
    study = optuna.load_study(study_name="shared", storage=url)
    pruned = study.trials[6]
    assert pruned.state == optuna.trial.TrialState.PRUNED and list(pruned.intermediate_values) == [1]
    assert pruned.user_attrs["worker"] not in {t.user_attrs["worker"] for t in study.trials[:6]}
    assert study.trials[7].state == optuna.trial.TrialState.RUNNING  # what a dead process leaves

    # after the grace period the trial counts as lost; --resume on that machine continues it from its saved
    # epoch (a new trial, 8, in the same run folder), and the budget of 8 is used up exactly
    time.sleep(GRACE_S + 0.5)
    out, err = finish(start(["tune", "--resume", str(d_tune)], url, tmp_path))
    assert "continuing interrupted trial(s) 7 from their run folders" in err
    assert ran(err) == [8]
    study = optuna.load_study(study_name="shared", storage=url)
    states = [t.state.name for t in study.trials]
    assert len(states) == 9 and states[7] == "FAIL" and states[8] in ("COMPLETE", "PRUNED"), states
    assert study.trials[8].user_attrs["continues_trial"] == 7
    assert study.trials[8].user_attrs["run_dir"] == str(d_tune / "trial-7" / "1")
    assert (d_tune / "trial-7" / "1" / "results.json").is_file()
    rows = table_rows(out)
    assert [row[0] for row in rows] == [str(n) for n in range(9)]
    assert rows[7][1] == "lost" and rows[8][1].endswith(", continues 7"), rows

    # any machine shows the same table of the whole study, training nothing (the budget is used up)
    shown = CliRunner().invoke(app, ["tune", "--resume", str(machines["a"] / "tune-shared"), "--storage", url])
    assert shown.exit_code == 0, shown.output
    assert table_rows(shown.stdout) == rows
    # and so does a machine without a search folder: the study by its name, read only
    shown = CliRunner().invoke(app, ["tune", "--storage", url, "--name", "shared", "--out", str(tmp_path / "e")])
    assert shown.exit_code == 0, shown.output
    assert table_rows(shown.stdout) == rows and not (tmp_path / "e").exists()
    print(f"three processes, 6 trials: {first_phase:.1f} s")


def test_connection_problems_are_one_line(postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = postgres.create_database("tune_errors")
    server_down = f"postgresql://cnnctl:x@127.0.0.1:{free_port()}/tune_errors"
    cases = {
        server_down: "cannot connect (connection failed: connection to server at \"127.0.0.1\", port",
        postgres.url("tune_errors", password="wrong"): "password authentication failed for user \"cnnctl\"",
        postgres.url("no_such_db"): "database \"no_such_db\" does not exist",
        good.replace("postgresql://", "postgersql://"): "postgersql:// is not a database SQLAlchemy knows (did you mean postgresql://?)",
        good.replace("@127.0.0.1", "@@127.0.0.1"): "cannot connect",
    }
    for url, message in cases.items():
        result = CliRunner().invoke(app, ["tune", "lenet5", "--param", "lr=loguniform:1e-4:1e-2", "--storage", url,
                                          "--out", str(tmp_path)])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], (url, result.stderr)
        assert "wrong" not in lines[0] and PG_PASSWORD not in lines[0]  # the password is never shown
    assert list(tmp_path.iterdir()) == []  # nothing was made
    monkeypatch.setenv("CNNCTL_TUNE_GRACE_S", "soon")
    result = CliRunner().invoke(app, ["tune", "lenet5", "--param", "lr=loguniform:1e-4:1e-2", "--storage", good,
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: CNNCTL_TUNE_GRACE_S=soon: the grace period is a whole number of seconds, at least 2")
