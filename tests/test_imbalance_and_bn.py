"""The pieces behind small and imbalanced data: class weights, the balanced sampler, precise BatchNorm, the
default batch size — each checked against an independent computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnctl.data.base import ImageTensors, Preprocessing
from cnnctl.data.loader import BatchLoader, default_batch_size
from cnnctl.engine.batchnorm import recompute_batchnorm
from cnnctl.engine.imbalance import balanced_sample_weights, resolve_class_weights
from cnnctl.errors import UsageError
from cnnctl.recipe.class_weights import read_class_weights_file


def test_auto_class_weights_are_scikit_learns_balanced() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 20)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
    assert resolve_class_weights("auto", ["a", "b", "c"], labels).tolist() == pytest.approx(expected.tolist())


def test_class_weights_file(tmp_path: Path) -> None:
    json_file = tmp_path / "w.json"
    json_file.write_text('{"b": 4, "a": 0.5}')
    assert resolve_class_weights(str(json_file), ["a", "b", "c"], torch.zeros(3)).tolist() == [0.5, 4.0, 1.0]
    csv_file = tmp_path / "w.csv"
    csv_file.write_text("# class,weight\na,2\nc 3\n")
    assert read_class_weights_file(csv_file) == {"a": 2.0, "c": 3.0}
    csv_file.write_text("a,-1\n")
    with pytest.raises(UsageError, match="weights must be finite and >= 0"):
        read_class_weights_file(csv_file)
    with pytest.raises(UsageError, match="unknown class"):
        resolve_class_weights(str(json_file), ["a", "c"], torch.zeros(3))
    csv_file.write_text("a,heavy\n")
    with pytest.raises(UsageError, match="not a number"):
        read_class_weights_file(csv_file)


def test_balanced_sampler_draws_every_class_equally_often() -> None:
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    data = ImageTensors(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), labels, ("a", "b", "c"))
    loader = BatchLoader(data, Preprocessing(1, (2, 2)), batch_size=100, device=torch.device("cpu"), shuffle=True,
                         sample_weights=balanced_sample_weights(labels, 3))
    drawn = torch.cat([batch_labels for _ in range(20) for _, batch_labels in loader])
    shares = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert shares.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)
    assert len(drawn) == 20 * 1000  # an epoch is still len(data) images


def test_precise_batchnorm_replaces_stale_statistics_by_the_data_average() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.9))
    norm = model[1]
    norm.running_mean.fill_(50.0)  # stale statistics of an earlier network
    norm.running_var.fill_(1e-3)
    inputs = torch.randn(64, 1, 4, 4) * 3 + 1
    batches = [(chunk, torch.zeros(len(chunk))) for chunk in inputs.split(16)]
    model.train(False)
    assert recompute_batchnorm(model, batches) == 64
    with torch.no_grad():
        features = model[0](inputs)
    per_batch = [f.transpose(0, 1).flatten(1) for f in features.split(16)]
    assert norm.running_mean.tolist() == pytest.approx(torch.stack([b.mean(1) for b in per_batch]).mean(0).tolist(),
                                                       rel=1e-5)
    assert norm.running_var.tolist() == pytest.approx(torch.stack([b.var(1) for b in per_batch]).mean(0).tolist(),
                                                      rel=1e-5)
    assert not model.training and not norm.training and norm.momentum == 0.1  # modes and momentum put back


def test_default_batch_size_keeps_enough_steps_per_epoch() -> None:
    assert default_batch_size(55_000) == 128  # MNIST: unchanged
    assert default_batch_size(4_096) == 128
    assert default_batch_size(1_617) == 32  # scikit-learn's digits after the validation split: 50 steps
    assert default_batch_size(720) == 16  # 45 steps
    assert default_batch_size(40) == 16
