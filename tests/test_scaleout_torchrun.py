"""Two "nodes" on this machine: two ``torchrun`` agents that meet through a c10d rendezvous on 127.0.0.1, one
process each (gloo), exactly as docs/scale-out.md's multi-machine recipe starts them. The run folder is on a file
system both see (here, the same disk)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from real_mnist import write_mnist_folder
from services import free_port
from typer.testing import CliRunner

from cnnctl.cli import app
from cnnctl.engine.state import read_state

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 training images of the real digits 0-3 (40 held out for validation), 40 test images."""
    return write_mnist_folder(tmp_path_factory.mktemp("digits"), train_per_class=40, test_per_class=10)


def train_args(digits: Path, out: Path, epochs: int) -> list[str]:
    return ["train", "lenet5", "--data", str(digits), "--val-split", "40", "--epochs", str(epochs), "--batch-size",
            "20", "--no-plots", "--threads", "1", "--device", "cpu", "--deterministic", "--out", str(out)]


def node(port: int, args: list[str], *, conf: str = "join_timeout=60", start: bool = True) -> Any:
    """One node of the docs' recipe: ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d
    --rdzv-endpoint HOST:PORT --rdzv-id ID --rdzv-conf join_timeout=60 -m cnnctl train ...``."""
    command = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
               f"127.0.0.1:{port}", "--rdzv-id", "digits", "--rdzv-conf", conf, "-m", "cnnctl", *args]
    if not start:
        return command
    return subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def both(nodes: list[subprocess.Popen[str]], timeout: float = 180) -> list[tuple[int, str, str]]:
    done = []
    for process in nodes:
        out, err = process.communicate(timeout=timeout)
        done.append((process.returncode, out, err))
    return done


def the_run(out: Path) -> Path:
    (group,) = out.iterdir()
    (run_dir,) = group.iterdir()
    return run_dir


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def kill_node(process: subprocess.Popen[str]) -> None:
    """A lost machine: its torchrun agent and every process under it, at once (kill -9)."""
    pids = [process.pid]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == process.pid:  # a child of the agent: its worker
                pids.append(int(proc.name))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def documented_recipe(port: int, digits: Path, out: Path) -> list[str]:
    """docs/scale-out.md's multi-machine recipe, word for word, with this machine's address and folders."""
    text = (Path(__file__).parent.parent / "docs" / "scale-out.md").read_text()
    block = text.split("the rendezvous endpoint; any node can be it):\n\n```sh\n", 1)[1].split("```", 1)[0]
    command = block.replace("\\\n", " ").replace("node1:29500", f"127.0.0.1:{port}")
    command = command.replace("/shared/digits", str(digits)).replace("/shared/runs", str(out))
    words = shlex.split(command)
    assert words[0] == "torchrun"
    return [TORCHRUN, *words[1:]]


def test_the_documented_recipe_is_what_the_tests_run(digits: Path, tmp_path: Path) -> None:
    recipe = documented_recipe(1234, digits, tmp_path)
    launched = node(1234, train_args(digits, tmp_path, 2), start=False)
    assert recipe == launched


def test_two_nodes_train_exactly_like_one_node_with_two_processes(digits: Path, tmp_path: Path) -> None:
    port = free_port()
    nodes = [subprocess.Popen(documented_recipe(port, digits, tmp_path / "two-nodes"), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
             for _ in range(2)]
    for code, _, err in both(nodes):
        assert code == 0, err
    two_nodes = the_run(tmp_path / "two-nodes")
    one_node = subprocess.run([sys.executable, "-m", "cnnctl", *train_args(digits, tmp_path / "one-node", 2),
                               "--nproc", "2"], capture_output=True, text=True, timeout=180)
    assert one_node.returncode == 0, one_node.stderr
    one = json.loads((the_run(tmp_path / "one-node") / "results.json").read_text())
    two = json.loads((two_nodes / "results.json").read_text())
    assert two["processes"] == 2 and two["weights_sha256"][0] == two["weights_sha256"][1]
    assert two["weights_sha256"] == one["weights_sha256"]  # bit for bit the same weights
    assert two["test_acc"] == one["test_acc"] and two["test_loss"] == one["test_loss"]
    for row_two, row_one in zip(metrics(two_nodes), metrics(the_run(tmp_path / "one-node")), strict=True):
        for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert row_two[column] == row_one[column]


def test_a_lost_node_ends_both_and_the_run_resumes(digits: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    epochs = 40
    port = free_port()
    first, second = [node(port, train_args(digits, out, epochs)) for _ in range(2)]
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob("*/*/state.safetensors"))):
        assert first.poll() is None and second.poll() is None, (first.communicate(), second.communicate())
        assert time.monotonic() < deadline, "no epoch was saved"
        time.sleep(0.02)
    kill_node(second)
    killed_at = time.monotonic()
    code, _, err = both([first], timeout=120)[0]
    seconds = time.monotonic() - killed_at
    second.communicate()
    run_dir = the_run(out)
    assert code != 0 and seconds < 60, (code, seconds)
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "another training process is gone" in ours[0], err
    assert f"the last finished epoch is saved in {run_dir} — start the same launch on every node with " \
           f"`train --resume {run_dir}`" in ours[0]
    saved = read_state(run_dir).state.epoch
    assert 1 <= saved < epochs and not (run_dir / "results.json").exists()

    # the same launch with --resume continues it; a run started on another node against the same folder while
    # it trains is refused in one line, and nothing the two nodes train is lost
    port = free_port()
    resumed = [node(port, ["train", "--resume", str(run_dir)]) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(metrics(run_dir)) <= saved:
        assert all(process.poll() is None for process in resumed), [p.communicate() for p in resumed]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    intruder = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--threads", "1"])
    for code, _, err in both(resumed):
        assert code == 0, err
    assert intruder.exit_code == 2
    assert intruder.stderr.strip() == (f"error: {run_dir} is being trained by another cnnctl process — wait for it "
                                       "to finish, or stop it first")
    assert [int(row["epoch"]) for row in metrics(run_dir)] == list(range(1, epochs + 1))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["processes"] == 2 and results["weights_sha256"][0] == results["weights_sha256"][1]
    print(f"a lost node ended the other after {seconds:.1f} s")


def test_a_rendezvous_nobody_answers_times_out(digits: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    lonely = node(free_port(), train_args(digits, tmp_path / "runs", 1),
                  conf="join_timeout=6,read_timeout=3,is_host=false")  # a node that is not the endpoint's host
    code, _, err = both([lonely], timeout=120)[0]
    seconds = time.monotonic() - started
    assert code != 0 and seconds < 90, seconds
    assert "RendezvousConnectionError: The connection to the C10d store has failed" in err
    assert "The client socket has timed out after 3000ms while trying to connect to (127.0.0.1" in err
    assert not (tmp_path / "runs").exists()
    print(f"an endpoint nobody answers: torchrun gave up after {seconds:.1f} s")
