"""Multi-label training end to end on tiny data: the task, the loss, thresholds in the checkpoint, eval,
predict, report, explain, export, tune and resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from multilabel_data import QUADRANTS, quadrant_images

import cnnctl
from cnnctl import registry
from cnnctl.data.base import ImageTensors
from cnnctl.registry import DatasetSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _loader(directory: Path, split: str) -> ImageTensors:
    images, targets = quadrant_images(160 if split == "train" else 48, seed=1 if split == "train" else 2)
    return ImageTensors(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(targets), QUADRANTS,
                        source=f"quadrants {split}")


@pytest.fixture()
def quadrants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatasetSpec]:
    """``quadrants``: 160 training images (32 held out for validation) and 48 test images, 1-2 labels each."""
    registry.datasets()
    spec = DatasetSpec(name="quadrants", description="multi-label test data", classes=QUADRANTS,
                       image_shape=(1, 28, 28), mean=(0.2,), std=(0.3,), train_size=160, test_size=48,
                       loader=_loader, default_val_split=32)
    registry.register_dataset(spec)
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "data"))
    yield spec
    registry._DATASETS.pop("quadrants", None)


FAST = {"epochs": 3, "threads": 1, "plots": False, "batch_size": 16, "channels_last": False}


@pytest.fixture()
def trained(quadrants: DatasetSpec, tmp_path: Path) -> cnnctl.api.FitResult:
    return cnnctl.train("lenet5", dataset="quadrants", out=str(tmp_path / "runs"), class_weights="auto", **FAST)


def test_training_chooses_the_task_and_keeps_thresholds(trained, tmp_path: Path) -> None:
    meta = cnnctl.checkpoint.read_meta(trained.best_path)
    assert meta.task == "multilabel" and meta.config["task"] == "multilabel"
    assert len(meta.thresholds) == 4 and all(0 <= t <= 1 for t in meta.thresholds)
    results = json.loads((trained.run_dir / "results.json").read_text())
    assert results["task"] == "multilabel" and results["test_map"] > 0.9
    assert {"val_map", "val_micro_f1", "val_acc"} <= set(trained.history[-1])
