"""The IDX parser against hand-made bytes, and metrics against an independent loop computation."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import idx_bytes

from cnnctl.data.idx import parse_idx, read_idx
from cnnctl.engine.metrics import confusion_matrix, per_class_report
from cnnctl.errors import DataError


def test_parse_idx_round_trip() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(array)), array)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x07", "unsupported IDX data type"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x07", "header says 5"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff", "more than any IDX file"),
    ],
)
def test_parse_idx_rejects_bad_bytes(data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_idx(data, source="x.idx")


def test_read_idx_reports_truncated_gzip(tmp_path) -> None:
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 4, 4), np.uint8)))[:-12])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(path)


def test_metrics_match_a_plain_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (500,), generator=generator)
    predictions = torch.where(torch.rand(500, generator=generator) < 0.7, targets,
                              torch.randint(0, 4, (500,), generator=generator))
    predictions[predictions == 3] = 2  # class 3 is never predicted: precision undefined -> 0
    matrix = confusion_matrix(targets, predictions, 4)
    report = per_class_report(matrix, ["a", "b", "c", "d"])
    pairs = list(zip(targets.tolist(), predictions.tolist()))
    for k, row in enumerate(report["per_class"]):
        tp = sum(1 for t, p in pairs if t == k and p == k)
        fp = sum(1 for t, p in pairs if t != k and p == k)
        fn = sum(1 for t, p in pairs if t == k and p != k)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == tp + fn
    assert report["macro_f1"] == pytest.approx(sum(r["f1"] for r in report["per_class"]) / 4)
    assert int(matrix.sum()) == 500
