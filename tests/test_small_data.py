"""Small real data with the defaults: a 4-class folder of real MNIST digits (200 training + 50 test images per
class) must train to >= 95% in 5 epochs without validation collapsing — the case where batch 128 and stale
BatchNorm statistics gave mobilenet_v3_small 25% (chance). And a 10:1 imbalanced folder, where
``--class-weights auto`` must beat plain cross-entropy on macro-F1. (All five architectures, before and after:
benchmarks/smalldata.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_mnist import write_mnist_folder

import cnnctl


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mnist_folder(tmp_path_factory.mktemp("mnist4"))


@pytest.mark.parametrize(("arch", "options"), [("lenet5", {}), ("mobilenet_v3_small", {"img_size": 64})])
def test_defaults_train_small_real_data(digits: Path, tmp_path: Path, arch: str, options: dict[str, int]) -> None:
    run = cnnctl.train(arch, data=str(digits), epochs=5, out=str(tmp_path), plots=False, threads=1, **options)
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["batch_size"] == 16  # 720 training images: 45 steps an epoch
    assert run.test is not None and run.test["test_acc"] >= 0.95, run.test
    val = [row["val_acc"] for row in run.history]
    train = [row["train_acc"] for row in run.history]
    assert train[-1] > train[0]
    assert min(val[1:]) >= 0.85, val  # no collapse after the first epoch
    assert all(later >= earlier - 0.1 for earlier, later in zip(val, val[1:])), val
    assert {"val_macro_f1", "val_balanced_acc"} <= set(run.history[-1])


def test_class_weights_beat_plain_loss_on_imbalanced_data(tmp_path: Path) -> None:
    from cnnctl.engine.evaluate import evaluate_checkpoint

    folder = write_mnist_folder(tmp_path / "imbalanced", train_per_class=(200, 20, 200, 20))
    scores = {}
    for weights in (None, "auto"):
        # batch 128: 3 steps an epoch, where plain cross-entropy has not learnt the rare digits yet (at the
        # default batch, 16, both runs reach a macro-F1 near 0.94: benchmarks/smalldata.py)
        run = cnnctl.train("lenet5", data=str(folder), epochs=3, batch_size=128, class_weights=weights,
                           out=str(tmp_path / "runs"), plots=False, threads=1)
        result, _ = evaluate_checkpoint(run.best_path)
        scores[weights] = result.macro_f1
    assert scores["auto"] > scores[None] + 0.1, scores


def test_bad_imbalance_options_are_one_line_before_training(digits: Path, tmp_path: Path) -> None:
    from test_cli_errors import assert_one_line_error, run_cli

    weights = tmp_path / "weights.csv"
    weights.write_text("0,1\n1,-2\n")
    base = ("train", "lenet5", "--data", str(digits), "--out", str(tmp_path / "runs"))
    assert_one_line_error(run_cli(*base, "--class-weights", str(weights)), "weights must be finite and >= 0")
    weights.write_text("0,1\ncat,2\n")
    assert_one_line_error(run_cli(*base, "--class-weights", str(weights)), "unknown class(es) 'cat'")
    assert_one_line_error(run_cli(*base, "--monitor", "val_macro_f1", "--val-split", "0"),
                          "--monitor val_macro_f1 needs a validation split")
    assert not (tmp_path / "runs").exists()


def test_a_class_left_without_readable_images_is_an_error(tmp_path: Path) -> None:
    from dataset_files import write_image_folder
    from test_cli_errors import run_cli

    written = write_image_folder(tmp_path / "data", ("cat", "dog"), 4)
    for path in written["dog"]:
        path.write_bytes(path.read_bytes()[:40])  # truncated: every dog fails to decode
    result = run_cli("train", "simplecnn", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs"))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: class(es) dog: none of their training images could be read"), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()
