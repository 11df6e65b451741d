"""Runs written by an earlier cnnctl (tests/fixtures/runs_v1: one finished after its only epoch, one interrupted
by Ctrl-C in epoch 2) resume with this one and continue as that cnnctl continued them (``expected.json``: its
metrics and test result; ``expected-NAME.safetensors``: its final weights). Bit-exact on the CPU that recorded
them; another CPU's kernels round floats differently (about 1e-7 of a loss), so metrics are compared to 1e-5
and weights to 1e-4."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import cnnctl

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v1"
TIMING = {"epoch_time_s", "images_per_s"}
ADDED_SINCE = {"val_balanced_acc", "val_macro_f1", "test_balanced_acc", "test_macro_f1", "split"}  # added later


CLOSE = {"rel": 1e-5, "abs": 1e-7}


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row or test result with its floats approximate: equal to 1e-5 on any CPU."""
    return {key: pytest.approx(float(value), **CLOSE) for key, value in row.items()}


@pytest.mark.parametrize("name", ["finished", "interrupted"])
def test_a_run_from_the_previous_format_resumes(micro_digits, tmp_path: Path, name: str) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())[name]
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)
    result = cnnctl.train(resume=run_dir, epochs=expected["epochs"])
    rows = [{k: float(v) for k, v in row.items() if k not in TIMING | ADDED_SINCE}
            for row in csv.DictReader((run_dir / "metrics.csv").open())]
    assert rows == [numbers(row) for row in expected["metrics"]]
    # the earlier cnnctl named the top-k accuracy test_top5 whatever k was; it is named by its k now
    test = {("test_top5" if key.startswith("test_top") and key[8:].isdigit() else key): value
            for key, value in result.test.items() if key not in ADDED_SINCE}
    assert {key: float(value) for key, value in test.items()} == numbers(expected["test"])
    assert json.loads((run_dir / "results.json").read_text())["test_acc"] == expected["test"]["test_acc"]
    weights = load_file(str(run_dir / "last.safetensors"))
    recorded = load_file(str(FIXTURES / f"expected-{name}.safetensors"))
    assert weights.keys() == recorded.keys()
    for key in recorded:
        torch.testing.assert_close(weights[key], recorded[key], rtol=1e-4, atol=1e-6, msg=key)
