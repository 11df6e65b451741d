"""Temperature scaling and abstention: the pure functions against independent computations, then `cnnctl
calibrate` on a LeNet-5 trained one epoch on synthetic digits, read back by eval, predict, cnnctl.predict and
export; every bad input one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl import checkpoint
from cnnctl.cli import app
from cnnctl.engine.calibration import (
    check_calibration_split,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from cnnctl.errors import UsageError
from cnnctl.report.analysis import CalibrationBins

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def numpy_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE written independently: a loop over the bins (lower, upper]."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    total = 0.0
    for i in range(bins):
        members = (confidence > i / bins) & (confidence <= (i + 1) / bins)
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def random_outputs(count: int, classes: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and labels drawn from softmax(z): a perfectly calibrated model, whose logits are then × scale."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, classes, generator=generator, dtype=torch.float64) * 3
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits * scale, labels


# ------------------------------------------------------------------------------------------ pure functions
def test_ece_matches_an_independent_computation_and_the_report_bins() -> None:
    logits, labels = random_outputs(3000, 7, 2.5, seed=1)
    probabilities = logits.softmax(dim=1)
    ece = expected_calibration_error(probabilities, labels)
    assert ece == pytest.approx(numpy_ece(probabilities.numpy(), labels.numpy()), abs=1e-12)
    bins = CalibrationBins(15)
    bins.add(probabilities, labels)
    assert ece == pytest.approx(bins.result()["ece"], abs=1e-9)
    assert ece > 0.05  # over-confident by 2.5x
    assert expected_calibration_error(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1])) == \
        pytest.approx(0.15)


def test_temperature_undoes_overconfidence_and_minimises_the_nll() -> None:
    logits, labels = random_outputs(4000, 5, 3.0, seed=2)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    best = negative_log_likelihood(logits, labels, temperature)
    for other in (temperature * 1.05, temperature / 1.05, 1.0):
        assert best < negative_log_likelihood(logits, labels, other)
    before = expected_calibration_error(logits.softmax(1), labels)
    after = expected_calibration_error((logits / temperature).softmax(1), labels)
    assert after < before / 3
    # under-confident logits get a temperature below 1
    assert fit_temperature(*random_outputs(4000, 5, 0.5, seed=3)) == pytest.approx(0.5, rel=0.1)


def test_threshold_is_the_lowest_meeting_the_target_by_brute_force() -> None:
    logits, labels = random_outputs(500, 4, 1.0, seed=4)
    probabilities = logits.softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    wrong = predicted != labels
    for target in (0.02, 0.05, 0.1, 0.2):
        chosen = choose_threshold(probabilities, labels, target)
        meeting = [float(t) for t in confidence.unique()
                   if float(wrong[confidence >= t].double().mean()) <= target]
        assert chosen.threshold == pytest.approx(min(meeting))
        kept = confidence >= chosen.threshold
        assert chosen.accepted == pytest.approx(float(kept.double().mean()))
        assert chosen.accepted_error == pytest.approx(float(wrong[kept].double().mean()))
        assert chosen.accepted_error <= target
    easy = choose_threshold(torch.eye(3)[[0, 1, 2]] * 0.9 + 0.03, torch.tensor([0, 1, 2]), 0.01)
    assert easy.threshold == 0.0 and easy.accepted == 1.0  # no error at all: nothing to reject
    with pytest.raises(UsageError, match="no threshold reaches"):
        choose_threshold(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([1, 0]), 0.01)


def test_a_split_too_small_or_of_one_class_is_refused() -> None:
    with pytest.raises(UsageError, match="holds 5 images; calibration needs at least 20"):
        check_calibration_split(torch.zeros(5, dtype=torch.int64), 10)
    with pytest.raises(UsageError, match="one class only"):
        check_calibration_split(torch.full((40,), 3), 10)


# ------------------------------------------------------------------------------------------ a checkpoint
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, digits_mirror) -> Path:
    """LeNet-5 after one epoch on tinydigits (1,000 training and 200 validation images)."""
    from conftest import tiny_digits_spec

    from cnnctl import registry

    mirror, contents = digits_mirror
    work = tmp_path_factory.mktemp("calibrate")
    registry.datasets()
    registry.register_dataset(tiny_digits_spec(contents))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCTL_DATA", str(work / "data"))
        patch.setenv("CNNCTL_MIRROR", str(mirror))
        run = cnnctl.train("lenet5", dataset="tinydigits", epochs=1, out=str(work / "runs"), plots=False,
                           threads=1, lr=0.003)
        yield run.best_path
    registry._DATASETS.pop("tinydigits", None)


@pytest.fixture(scope="module")
def calibrated(trained: Path) -> tuple[Path, dict]:
    target = trained.with_name("calibrated.safetensors")  # the dataset stays registered while `trained` lives
    result = invoke("calibrate", trained, "--target-error", "0.02", "--output", target, "--json")
    assert result.exit_code == 0, result.output
    return target, json.loads(result.stdout)


def test_calibrate_stores_the_temperature_fitted_on_the_validation_logits(trained: Path, calibrated) -> None:
    target, record = calibrated
    assert checkpoint.read_meta(trained).calibration is None  # --output leaves the source as it was
    meta = checkpoint.read_meta(target)
    assert meta.calibration["temperature"] == pytest.approx(record["temperature"])
    assert record["images"] == 200 and record["split"] == "val"
    # the stored numbers, recomputed from the validation images with the functions above
    from cnnctl.engine.evaluate import open_evaluation

    opened = open_evaluation(target, split="val", device="cpu")
    logits = torch.cat([opened.model(inputs).detach() for inputs, _ in opened.batches]).double()
    labels = torch.cat([labels for _, labels in opened.batches])
    temperature = record["temperature"]
    assert temperature == pytest.approx(fit_temperature(logits, labels), rel=1e-4)
    assert record["nll_after"] <= record["nll_before"] + 1e-9
    assert record["ece_before"] == pytest.approx(expected_calibration_error(logits.softmax(1), labels), abs=1e-6)
    assert record["ece_after"] == pytest.approx(
        expected_calibration_error((logits / temperature).softmax(1), labels), abs=1e-6)
    chosen = choose_threshold((logits / temperature).softmax(1), labels, 0.02)
    assert meta.calibration["threshold"] == pytest.approx(chosen.threshold, abs=1e-6)
    # the weights are the same tensors
    before, after = checkpoint.read_tensors(trained), checkpoint.read_tensors(target)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_eval_predict_and_export_use_the_temperature_and_threshold(calibrated, tmp_path: Path) -> None:
    target, record = calibrated
    report = json.loads(invoke("eval", target, "--split", "val", "--json").stdout)
    assert report["calibration"]["ece"] == pytest.approx(record["ece_before"], abs=1e-6)
    assert report["calibrated"]["ece"] == pytest.approx(record["ece_after"], abs=1e-6)
    assert report["calibrated"]["temperature"] == pytest.approx(record["temperature"])

    model, _ = cnnctl.load(target)
    from conftest import synthetic_digits

    digits, _ = synthetic_digits(12, seed=5)  # blends of two digits: probabilities spread over classes
    images = torch.from_numpy((digits[:6].astype(np.uint16) + digits[6:]) // 2).to(torch.uint8).unsqueeze(1)
    _, probabilities = cnnctl.predict(model, images, reject_below=0)
    raw, _ = cnnctl.load(target)
    from cnnctl.data.loader import Normalizer, fit_to_input

    prep = model.cnnctl_meta.preprocessing
    inputs = Normalizer(prep.mean, prep.std, torch.device("cpu"))(fit_to_input(images, prep))
    expected = (raw(inputs).double() / record["temperature"]).softmax(1)
    assert torch.allclose(probabilities.double(), expected, atol=1e-5)
    top = probabilities.max(dim=1).values
    middle = float(top.median())
    labels, _ = cnnctl.predict(model, images, reject_below=middle)
    assert torch.equal(labels == -1, top < middle) and (labels == -1).any()

    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for index in range(4):
        Image.fromarray(images[index, 0].numpy()).save(folder / f"{index}.png")
    none = json.loads(invoke("predict", target, folder, "--reject-below", "0", "--json").stdout)
    assert not any(row["rejected"] for row in none)
    level = max(row["probability"] for row in none)  # the images below the most confident one
    cut = invoke("predict", target, folder, "--reject-below", repr(level), "--json", "--plot", tmp_path / "p.png")
    assert cut.exit_code == 0, cut.output
    assert (tmp_path / "p.png").stat().st_size > 0  # "unknown" drawn as a class name
    rows = json.loads(cut.stdout)
    below = [row["probability"] < level for row in none]
    count = sum(below)
    assert [row["rejected"] for row in rows] == below and count >= 1
    assert [row["class_name"] for row, low in zip(rows, below) if low] == ["unknown"] * count
    assert [row["label"] for row, low in zip(rows, below) if low] == [None] * count
    assert f"unknown: {count} of 4 images" in cut.stderr
    stored = invoke("predict", target, folder, "--json")  # the stored threshold by default
    threshold = record["threshold"]
    assert [row["rejected"] for row in json.loads(stored.stdout)] == \
        [row["probability"] < threshold for row in none]

    exported = invoke("export", target, "--format", "torchscript", "--output", tmp_path / "m.torchscript.pt")
    assert exported.exit_code == 0, exported.output
    document = json.loads((tmp_path / "m.preprocessing.json").read_text())
    assert document["temperature"] == pytest.approx(record["temperature"])
    assert document["reject_below"] == pytest.approx(threshold)


def test_calibrate_updates_in_place_atomically(trained: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy.safetensors"
    shutil.copy(trained, copy)
    result = invoke("calibrate", copy)
    assert result.exit_code == 0, result.output
    assert "temperature" in result.stdout and f"wrote {copy}" in result.stdout
    assert checkpoint.read_meta(copy).calibration["threshold"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.safetensors"]  # no temporary file left
    record = cnnctl.calibrate(copy, target_error=0.05, device="cpu")  # the Python API, in place again
    assert record["checkpoint"] == str(copy)
    assert checkpoint.read_meta(copy).calibration["threshold"] == pytest.approx(record["threshold"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.safetensors"]


def test_bad_inputs_are_one_line(trained: Path, micro_digits, tmp_path: Path) -> None:
    one_line_error(invoke("calibrate", trained, "--target-error", "1.5"), "--target-error must be in (0, 1)")
    one_line_error(invoke("predict", trained, tmp_path, "--reject-below", "2"), "--reject-below must be")
    run = cnnctl.train("lenet5", dataset="microdigits", epochs=1, out=str(tmp_path / "runs"), plots=False,
                       threads=1, val_split=8)
    one_line_error(invoke("calibrate", run.best_path), "holds 8 images; calibration needs at least 20")
    none = cnnctl.train("lenet5", dataset="microdigits", epochs=1, out=str(tmp_path / "none"), plots=False,
                        threads=1, val_split=0)
    one_line_error(invoke("calibrate", none.best_path), "this run held out none")
    # a temperature out of range in the metadata is refused when the checkpoint is read
    meta = checkpoint.read_meta(trained)
    meta.calibration = {"temperature": -1.0, "threshold": None}
    model, _ = checkpoint.load(trained)
    bad = checkpoint.save(tmp_path / "bad.safetensors", model, meta)
    one_line_error(invoke("predict", bad, tmp_path), "calibration.temperature")
