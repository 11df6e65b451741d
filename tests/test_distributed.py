"""Distributed training (issue 8): two real gloo processes on CPU, started by ``cnnctl train --nproc 2``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl import checkpoint
from cnnctl.cli import app
from cnnctl.data.loader import shard_order
from cnnctl.engine.distributed import weights_fingerprint

TESTS = Path(__file__).parent

# A script that registers the tests' ``tinydigits`` and runs the CLI: `--nproc` starts every rank with this same
# script, so the ranks know the dataset too.
CHILD = """
import gzip, os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_digits_spec
from cnnctl import registry
registry.datasets()
mirror = Path(os.environ["CNNCTL_MIRROR"])
registry.register_dataset(tiny_digits_spec({{p.name: gzip.decompress(p.read_bytes()) for p in mirror.glob("*.gz")}}))
from cnnctl.cli import main
main(sys.argv[1:])
"""
# lenet5 with BatchNorm (whose statistics each rank gathers on its own half of the batch), a learning rate low
# enough that two epochs end between chance and 100%, where differences would show.
SETTINGS = {"arch": "lenet5", "arch_args": {"batch_norm": True}, "dataset": "tinydigits", "lr": 2e-5,
            "scheduler": "none", "batch_size": 32, "augment": "none", "plots": False, "threads": 1,
            "deterministic": True, "device": "cpu"}


def cli_options(tmp_path: Path) -> list[str]:
    config = tmp_path / "lenet5-bn.json"
    config.write_text(json.dumps({"arch": "lenet5", "arch_args": {"batch_norm": True}}))
    return ["--config", str(config), "--dataset", "tinydigits", "--lr", "2e-5", "--scheduler", "none",
            "--batch-size", "32", "--augment", "none", "--no-plots", "--threads", "1", "--deterministic",
            "--device", "cpu"]


def run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "cnnctl_with_tinydigits.py"
    script.write_text(CHILD.format(tests=str(TESTS)))
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, text=True, capture_output=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_processes_train_like_one_and_resume(tiny_digits, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    first = run_script(tmp_path, "train", *cli_options(tmp_path), "--epochs", "1", "--out", str(out), "--nproc", "2")
    assert first.returncode == 0, first.stderr
    run_dir = out / "lenet5-tinydigits" / "1"
    assert first.stdout.count("run folder:") == 1 and first.stdout.count("epoch 1/1") == 1  # rank 0 alone prints
    assert "distributed: 2 processes (gloo), each trains on 16 of every 32 images per step" in first.stderr
    assert "Traceback" not in first.stderr
    assert list((out / "lenet5-tinydigits").iterdir()) == [run_dir]  # the folder rank 0 chose, shared by both

    # a resume needs the same number of processes (the steps per epoch depend on it); then every rank loads the state
    alone = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--epochs", "2"])
    assert alone.exit_code == 2 and "was trained by 2 process(es), not 1" in alone.stderr
    second = run_script(tmp_path, "train", "--resume", str(run_dir), "--epochs", "2", "--nproc", "2")
    assert second.returncode == 0, second.stderr
    assert "all 2 processes end with the same weights" in second.stderr

    results = json.loads((run_dir / "results.json").read_text())
    fingerprints = results["weights_sha256"]
    assert results["processes"] == 2 and len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    model, _ = checkpoint.load(run_dir / "last.safetensors")
    assert weights_fingerprint(model) == fingerprints[0]  # what the ranks held is what rank 0 saved

    # one process, same seed and global batch: the same batches in the same order; only BatchNorm statistics
    # (over 16 images per rank instead of 32) and the order of sums differ. Measured: test accuracy 56.3% vs 55.7%.
    single = cnnctl.train(**SETTINGS, epochs=2, out=str(tmp_path / "single"))
    assert 0.3 < single.test["test_acc"] < 0.9
    assert abs(results["test_acc"] - single.test["test_acc"]) <= 0.03
    assert abs(results["test_loss"] - single.test["test_loss"]) <= 0.01
    for row, alone_row in zip(read_metrics(run_dir), single.history, strict=True):
        assert abs(float(row["train_loss"]) - alone_row["train_loss"]) <= 0.005
        assert abs(float(row["val_acc"]) - alone_row["val_acc"]) <= 0.03

    # the checkpoint is an ordinary one: a single process loads and evaluates it
    loaded, _ = cnnctl.load(run_dir)
    assert not loaded.training and loaded(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
    evaluated = CliRunner().invoke(app, ["eval", str(run_dir / "best.safetensors"), "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(results["test_acc"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--nproc", "0"], "--nproc must be at least 1, got 0"),
    (["--nproc", "2", "--batch-size", "33"], "--batch-size 33 is the global batch and must divide evenly over 2 "
                                             "processes — pass --batch-size 32 or 34"),
    (["--nproc", "4096", "--batch-size", "4096"], "--nproc 4096 is more than the"),
    (["--nproc", "2", "--sync-bn"], "--sync-bn needs CUDA GPUs"),
])
def test_bad_process_counts_are_one_line(tiny_digits, extra: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["train", "lenet5", "--dataset", "tinydigits", "--device", "cpu", *extra])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr


def test_without_torch_distributed_or_against_torchrun(tiny_digits, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["train", "lenet5", "--dataset", "tinydigits", "--device", "cpu", "--nproc", "2"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: distributed training needs torch.distributed, which this PyTorch build "
                                     "lacks — install a PyTorch build with distributed support, or leave out --nproc")
    monkeypatch.undo()
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():  # as torchrun sets them
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["train", "lenet5", "--dataset", "tinydigits", "--nproc", "3"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --nproc 3 contradicts the 2 processes torchrun started")


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("total", [0, 5, 96, 100, 131])
def test_each_step_of_all_ranks_is_one_global_batch(world: int, total: int) -> None:
    per_rank = 4
    order = torch.randperm(total, generator=torch.Generator().manual_seed(total))
    parts = [shard_order(order, rank, world, per_rank) for rank in range(world)]
    assert len({len(part) for part in parts}) == 1  # every rank runs the same number of equal steps
    usable = total - total % world
    assert sorted(torch.cat(parts).tolist()) == sorted(order[:usable].tolist())  # disjoint, nothing else left out
    global_batch = per_rank * world
    for step, start in enumerate(range(0, usable, global_batch)):
        single = order[start:min(start + global_batch, usable)]
        size = len(single) // world
        together = torch.cat([part[step * per_rank:step * per_rank + size] for part in parts])
        assert torch.equal(together, single)  # rank r holds the r-th consecutive part of the batch


def test_the_launcher_passes_on_the_command_without_nproc(tiny_digits, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnctl.engine import distributed

    launched = []
    monkeypatch.setattr(distributed, "launch", lambda args, nproc, **_: launched.append((args, nproc)) or 3)
    result = CliRunner().invoke(app, ["train", "lenet5", "-d", "tinydigits", "--nproc", "2", "--no-plots",
                                      "--deterministic", "--lr", "0.01", "--device", "cpu"])
    assert result.exit_code == 3  # the ranks' exit code
    assert launched == [(["train", "lenet5", "--dataset", "tinydigits", "--device", "cpu", "--lr", "0.01",
                          "--no-plots", "--deterministic"], 2)]  # in the order of cnnctl/recipe/options.py
