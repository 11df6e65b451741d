"""Runs written by an earlier cnnctl (tests/fixtures/runs_v1: one finished after its only epoch, one interrupted
by Ctrl-C in epoch 2) resume with this one and continue exactly as that cnnctl continued them
(``expected.json``: its metrics, test result and final weights, recorded when the fixture was made)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cnnctl

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v1"
TIMING = {"epoch_time_s", "images_per_s"}
ADDED_SINCE = {"val_balanced_acc", "val_macro_f1", "test_balanced_acc", "test_macro_f1"}  # metrics added later


def weights_digest(path: Path) -> str:
    tensors = load_file(str(path))
    return hashlib.sha256(b"".join(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                                   for name in sorted(tensors))).hexdigest()


@pytest.mark.parametrize("name", ["finished", "interrupted"])
def test_a_run_from_the_previous_format_resumes(micro_digits, tmp_path: Path, name: str) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())[name]
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)
    result = cnnctl.train(resume=run_dir, epochs=expected["epochs"])
    rows = [{k: v for k, v in row.items() if k not in TIMING | ADDED_SINCE}
            for row in csv.DictReader((run_dir / "metrics.csv").open())]
    assert rows == expected["metrics"]
    # the earlier cnnctl named the top-k accuracy test_top5 whatever k was; it is named by its k now
    test = {("test_top5" if key.startswith("test_top") and key[8:].isdigit() else key): value
            for key, value in result.test.items() if key not in ADDED_SINCE}
    assert test == expected["test"]
    assert json.loads((run_dir / "results.json").read_text())["test_acc"] == expected["test"]["test_acc"]
    assert weights_digest(run_dir / "last.safetensors") == expected["last_weights_sha256"]
