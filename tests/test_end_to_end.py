"""The whole MNIST-style path through the CLI on a tiny IDX dataset: download from a mirror, train, eval,
predict PNGs, summary — the same steps .ci/run runs on the real MNIST."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnctl import checkpoint
from cnnctl.cli import app
from cnnctl.data.idx import read_idx

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


@pytest.fixture()
def trained_run(tiny_digits, tmp_path: Path) -> Path:
    result = invoke("train", "lenet5", "--dataset", "tinydigits", "--epochs", "3", "--batch-size", "32",
                    "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "lenet5-tinydigits" / "1"
    assert run_dir.is_dir()
    return run_dir


def test_train_writes_a_complete_run_folder(trained_run: Path) -> None:
    for name in ("best.safetensors", "last.safetensors", "metrics.csv", "config.json", "results.json"):
        assert (trained_run / name).is_file(), name
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["val_acc"]) >= 0 and float(r["lr"]) > 0 and float(r["images_per_s"]) > 0 for r in rows)
    config = json.loads((trained_run / "config.json").read_text())
    assert config["arch"] == "lenet5" and config["epochs"] == 3 and config["batch_size"] == 32
    results = json.loads((trained_run / "results.json").read_text())
    assert results["test_acc"] >= 0.9, results  # the synthetic classes are easy: real learning must happen
    meta = checkpoint.read_meta(trained_run / "best.safetensors")
    assert meta.arch == "lenet5" and meta.classes == [str(d) for d in range(10)]
    assert meta.preprocessing.input_shape == (1, 32, 32) and meta.preprocessing.pad == 2
    assert meta.metrics["test_acc"] == pytest.approx(results["test_acc"])


def test_run_files_get_the_umask_permissions_not_0600(trained_run: Path) -> None:
    """Files are written to a private temporary name and renamed; the result is readable like any other file."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for name in ("best.safetensors", "last.safetensors", "metrics.csv", "config.json", "results.json"):
        assert (trained_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_second_run_gets_a_new_folder(trained_run: Path, tmp_path: Path) -> None:
    result = invoke("train", "simplecnn", "--dataset", "tinydigits", "--epochs", "1", "--out", str(tmp_path / "runs"),
                    "--name", "lenet5-tinydigits")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "lenet5-tinydigits" / "2" / "best.safetensors").is_file()
    assert (trained_run / "config.json").is_file()


def test_eval_reproduces_the_training_test_accuracy(trained_run: Path) -> None:
    result = invoke("eval", str(trained_run / "best.safetensors"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    expected = json.loads((trained_run / "results.json").read_text())
    assert report["accuracy"] == pytest.approx(expected["test_acc"], abs=1e-12)
    assert report["count"] == 300
    confusion = np.array(report["confusion"])
    assert confusion.sum() == 300 and np.trace(confusion) / 300 == pytest.approx(report["accuracy"])
    assert len(report["per_class"]) == 10 and 0 <= report["macro_f1"] <= 1
    human = invoke("eval", str(trained_run))
    assert human.exit_code == 0 and f"{expected['test_acc']:.2%}" in human.stdout


def test_eval_on_the_validation_split_rebuilds_the_held_out_images(trained_run: Path) -> None:
    result = invoke("eval", str(trained_run / "best.safetensors"), "--split", "val", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["count"] == 200
    meta = checkpoint.read_meta(trained_run / "best.safetensors")
    assert report["accuracy"] == pytest.approx(meta.metrics["val_acc"], abs=1e-12)


def test_predict_pngs_agrees_with_labels_and_with_eval(trained_run: Path, tiny_digits, tmp_path: Path) -> None:
    from torchvision.io import write_png

    data_dir = Path(tiny_digits_dir())
    images = read_idx(data_dir / "t10k-images-idx3-ubyte.gz")[:40]
    labels = read_idx(data_dir / "t10k-labels-idx1-ubyte.gz")[:40]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index, image in enumerate(images):
        write_png(torch.from_numpy(image.copy()).unsqueeze(0), str(folder / f"{index:03d}.png"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    output = tmp_path / "preds.csv"
    result = invoke("predict", str(trained_run / "best.safetensors"), str(folder), "--output", str(output),
                    "--topk", "3")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 41  # 40 images + the broken one as an error row; notes.txt skipped
    broken = [r for r in rows if r["path"].endswith("broken.png")]
    assert broken and broken[0]["error"] and broken[0]["label"] == ""
    good = sorted((r for r in rows if not r["error"]), key=lambda r: r["path"])
    agree = sum(int(r["label"]) == int(label) for r, label in zip(good, labels))
    assert agree / 40 >= 0.9
    assert all(r["class"] == r["label"] and len(r["topk"].split(";")) == 3 for r in good)

    # the PNG path gives the same logits as the in-memory path (same preprocessing)
    model, meta = checkpoint.load(trained_run / "best.safetensors")
    from cnnctl.engine.predict import Predictor

    predictor = Predictor(model, meta)
    direct = predictor.logits(torch.from_numpy(images.copy()).unsqueeze(1))
    assert [int(r["label"]) for r in good] == direct.argmax(1).tolist()

    strict = runner.invoke(app, ["predict", str(trained_run), str(folder / "broken.png"), "--strict"])
    assert strict.exit_code == 1


def tiny_digits_dir() -> str:
    import os

    return os.path.join(os.environ["CNNCTL_DATA"], "tinydigits")


def test_reloaded_checkpoint_gives_bit_identical_outputs(trained_run: Path) -> None:
    first, _ = checkpoint.load(trained_run / "best.safetensors")
    second, _ = checkpoint.load(trained_run / "best.safetensors")
    inputs = torch.randn(16, 1, 32, 32)
    assert torch.equal(first(inputs), second(inputs))


def test_download_twice_says_already_there(tiny_digits) -> None:
    first = runner.invoke(app, ["download", "tinydigits"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["download", "tinydigits"])
    assert second.exit_code == 0 and "already" in second.output
    check = runner.invoke(app, ["download", "tinydigits", "--check"])
    assert check.exit_code == 0, check.output
