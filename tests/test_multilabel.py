"""Multi-label training end to end on tiny data: the task, the loss, thresholds in the checkpoint, eval,
predict, report, explain, export, tune and resume."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from multilabel_data import QUADRANTS, quadrant_images

import cnnctl
from cnnctl import registry
from cnnctl.data.base import ImageTensors
from cnnctl.errors import UsageError
from cnnctl.registry import DatasetSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _loader(directory: Path, split: str) -> ImageTensors:
    images, targets = quadrant_images(160 if split == "train" else 48, seed=1 if split == "train" else 2)
    return ImageTensors(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(targets), QUADRANTS,
                        source=f"quadrants {split}")


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatasetSpec]:
    """``quadrants``: 160 training images (32 held out for validation) and 48 test images, 1-2 labels each."""
    registry.datasets()
    spec = DatasetSpec(name="quadrants", description="multi-label test data", classes=QUADRANTS,
                       image_shape=(1, 28, 28), mean=(0.2,), std=(0.3,), train_size=160, test_size=48,
                       loader=_loader, default_val_split=32)
    registry.register_dataset(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCTL_DATA", str(tmp_path_factory.mktemp("data")))
        yield spec
    registry._DATASETS.pop("quadrants", None)


FAST = {"epochs": 3, "threads": 1, "plots": False, "batch_size": 16, "channels_last": False}


@pytest.fixture(scope="module")
def trained(quadrants: DatasetSpec, tmp_path_factory: pytest.TempPathFactory) -> cnnctl.api.FitResult:
    """One multi-label run shared by the tests that only read it."""
    return cnnctl.train("lenet5", dataset="quadrants", out=str(tmp_path_factory.mktemp("runs")),
                        class_weights="auto", **FAST)


def test_training_chooses_the_task_and_keeps_thresholds(trained) -> None:
    meta = cnnctl.checkpoint.read_meta(trained.best_path)
    assert meta.task == "multilabel" and meta.config["task"] == "multilabel"
    assert len(meta.thresholds) == 4 and all(0 <= t <= 1 for t in meta.thresholds)
    assert meta.label_count == [1, 2]  # the quadrant images have one or two labels each
    results = json.loads((trained.run_dir / "results.json").read_text())
    assert results["task"] == "multilabel" and results["test_map"] > 0.9
    assert {"val_map", "val_micro_f1", "val_acc"} <= set(trained.history[-1])


def write_pngs(folder: Path, count: int = 6, seed: int = 5) -> tuple[list[Path], np.ndarray]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images, targets = quadrant_images(count, seed)
    paths = []
    for i in range(count):
        paths.append(folder / f"q{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    return paths, targets


def test_eval_predict_and_report(trained, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cnnctl.cli import app

    report = cnnctl.evaluate(trained.run_dir, report=tmp_path / "report")
    assert report["task"] == "multilabel" and report["map"] > 0.9
    assert report["thresholds"] == cnnctl.checkpoint.read_meta(trained.best_path).thresholds
    assert [row["class"] for row in report["per_class"]] == list(QUADRANTS)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "subset accuracy" in html and "precision-recall-figure" in html and "Per label" in html
    assert "kept to 1 to 2 label(s) per image" in html
    stored = json.loads((tmp_path / "report" / "report.json").read_text())
    assert stored["map"] == pytest.approx(report["map"])
    assert report["label_count"] == [1, 2]
    lowered = cnnctl.evaluate(trained.run_dir, thresholds="0.01", label_count="any")
    assert lowered["micro_recall"] == pytest.approx(1.0) and lowered["thresholds"] == [0.01] * 4
    everything = cnnctl.evaluate(trained.run_dir, thresholds="0", label_count="any")
    assert everything["label_count"] is None and everything["labels_per_image"]["predicted"] == pytest.approx(4.0)
    kept = cnnctl.evaluate(trained.run_dir, thresholds="0")  # every label passes; the two most probable stay
    assert kept["labels_per_image"]["predicted"] == pytest.approx(2.0)
    assert cnnctl.evaluate(trained.run_dir, thresholds="1", label_count="1")["labels_per_image"][
        "predicted"] == pytest.approx(1.0)

    paths, targets = write_pngs(tmp_path / "images")
    given, probabilities = cnnctl.predict(trained.run_dir, tmp_path / "images")
    assert given.dtype == torch.bool and given.shape == probabilities.shape == (6, 4)
    assert (given == torch.from_numpy(targets > 0.5)).all(dim=1).float().mean() >= 0.5
    everything, _ = cnnctl.predict(trained.run_dir, tmp_path / "images", thresholds="0", label_count="any")
    assert everything.all()
    two, probabilities = cnnctl.predict(trained.run_dir, tmp_path / "images", thresholds="0")
    assert (two.sum(1) == 2).all()
    assert (two == torch.zeros_like(two).scatter_(1, probabilities.topk(2, dim=1).indices, True)).all()

    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(trained.run_dir), str(tmp_path / "images")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "path,labels,probabilities,error" and len(lines) == 7
    names = set(lines[1].split(",")[1].split("|"))
    assert names <= set(QUADRANTS) and lines[1].split(",")[2].count(":") == 4
    result = runner.invoke(app, ["predict", str(trained.run_dir), str(paths[0]), "--json", "--thresholds",
                                 "1,1,1,1", "--label-count", "any"])
    rows = json.loads(result.stdout)
    assert set(rows[0]["probabilities"]) == set(QUADRANTS)
    assert rows[0]["labels"] == [name for name, p in rows[0]["probabilities"].items() if p >= 1.0]
    result = runner.invoke(app, ["predict", str(trained.run_dir), str(paths[0]), "--json", "--thresholds", "1"])
    row = json.loads(result.stdout)[0]  # none reaches 1: the most probable label is given, as at least one is
    assert row["labels"] == [max(row["probabilities"], key=row["probabilities"].get)]
    result = runner.invoke(app, ["eval", str(trained.run_dir)])
    assert result.exit_code == 0 and "mAP" in result.stdout and "subset accuracy" in result.stdout


@pytest.mark.parametrize("option,value,message", [
    ("--thresholds", "0.5,0.5", "--thresholds has 2 values but the checkpoint has 4 labels"),
    ("--thresholds", "1.5", "--thresholds takes numbers from 0 to 1, got 1.5"),
    ("--thresholds", "nan", "--thresholds takes numbers from 0 to 1"),
    ("--thresholds", "x", "--thresholds takes numbers from 0 to 1, got 'x'"),
    ("--label-count", "x", "--label-count takes any, N or MIN-MAX labels per image, got 'x'"),
    ("--label-count", "3-1", "--label-count 3-1 is outside 0 <= MIN <= MAX <= 4"),
    ("--label-count", "5", "--label-count 5 is outside 0 <= MIN <= MAX <= 4"),
    ("--label-count", "1-", "--label-count takes any, N or MIN-MAX labels per image"),
])
def test_bad_thresholds_and_label_counts_are_one_line(trained, tmp_path: Path, option: str, value: str,
                                                      message: str) -> None:
    from typer.testing import CliRunner

    from cnnctl.cli import app

    paths, _ = write_pngs(tmp_path / "images", count=1)
    for command in (["predict", str(trained.run_dir), str(paths[0])], ["eval", str(trained.run_dir)]):
        result = CliRunner().invoke(app, [*command, option, value])
        assert result.exit_code != 0 and message in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) <= 2  # the error and, at most, its hint


def test_thresholds_of_a_single_label_checkpoint_are_refused(trained, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cnnctl.cli import app

    model, meta = cnnctl.checkpoint.load(trained.best_path)
    meta.task, meta.thresholds = "single", None
    single = cnnctl.checkpoint.save(tmp_path / "single.safetensors", model, meta)
    paths, _ = write_pngs(tmp_path / "images", count=1)
    result = CliRunner().invoke(app, ["predict", str(single), str(paths[0]), "--thresholds", "0.5"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--thresholds applies to multi-label checkpoints; this one is single-label" in result.stderr
    result = CliRunner().invoke(app, ["predict", str(single), str(paths[0]), "--label-count", "1"])
    assert result.exit_code != 0 and "--label-count applies to multi-label checkpoints" in result.stderr


def test_checkpoint_schema_refuses_bad_thresholds(trained, tmp_path: Path) -> None:
    from cnnctl.errors import CheckpointError

    model, meta = cnnctl.checkpoint.load(trained.best_path)
    for thresholds, message in (([0.5] * 3, "has 3 values but there are 4 classes"),
                                ([0.5, 0.5, 0.5, 2.0], "holds 2.0, outside 0..1")):
        meta.thresholds = thresholds
        path = cnnctl.checkpoint.save(tmp_path / "bad.safetensors", model, meta)
        with pytest.raises(CheckpointError, match=message):
            cnnctl.checkpoint.read_meta(path)
    meta.thresholds = [0.5] * 4
    for label_count, message in (([2, 1], r"is \[2, 1\]; 0 <= fewest <= most <= 4"), ([1, 5], "<= 4"),
                                 ([1], "must be \\[fewest, most\\]"), ([1.0, 2], "two whole numbers")):
        meta.label_count = label_count
        path = cnnctl.checkpoint.save(tmp_path / "bad.safetensors", model, meta)
        with pytest.raises(CheckpointError, match=f"label_count.*{message}"):
            cnnctl.checkpoint.read_meta(path)


def test_options_that_do_not_fit_several_labels_are_refused(quadrants, tmp_path: Path) -> None:
    for options, message in (({"task": "multilabel", "mixup": 0.2}, "--mixup does not apply to multi-label"),
                             ({"task": "single", "monitor": "val_map"}, "val_map (mean average precision)")):
        with pytest.raises(UsageError, match=message.replace("--", "").replace("(", r"\(").replace(")", r"\)")):
            cnnctl.train("lenet5", dataset="quadrants", out=str(tmp_path), **FAST, **options)
    with pytest.raises(UsageError, match="images of this data have up to 2 labels"):
        cnnctl.train("lenet5", dataset="quadrants", task="single", out=str(tmp_path), **FAST)


def test_explain_draws_one_map_per_label_given(trained, tmp_path: Path) -> None:
    paths, _ = write_pngs(tmp_path / "images", count=3)
    meta = cnnctl.checkpoint.read_meta(trained.best_path)
    given, probabilities = cnnctl.predict(trained.run_dir, paths)
    explanations = cnnctl.explain(trained.run_dir, paths, output=tmp_path / "maps")
    expected = [(str(path), QUADRANTS[c]) for path, row, p in zip(paths, given, probabilities)
                for c in (row.nonzero().flatten().tolist() or [int(p.argmax())])]
    assert [(item.source, item.target_name) for item in explanations] == expected
    for item in explanations:
        assert item.output.is_file() and f".{item.target_name}.gradcam.png" in item.output.name
        assert item.heatmap.shape == (28, 28)
        assert {name for _, name, _ in item.topk} <= set(meta.classes)
    one = cnnctl.explain(trained.run_dir, paths[0], target="se")
    assert len(one) == 1 and one[0].target_name == "se"


def test_export_states_and_checks_the_thresholds(trained, tmp_path: Path) -> None:
    result = cnnctl.export(trained.best_path, format="torchscript", output=tmp_path / "model.torchscript.pt")
    document = json.loads(result.preprocessing_path.read_text())
    meta = cnnctl.checkpoint.read_meta(trained.best_path)
    assert document["task"] == "multilabel" and document["thresholds"] == meta.thresholds
    assert document["label_count"] == meta.label_count == [1, 2] and "label_count[1]" in document["output"]
    assert "sigmoid" in document["output"] and result.label_decisions == result.verified_count * 4
    assert "decisions at the thresholds agree" in document["exports"]["model.torchscript.pt"]["verification"][
        "label_decisions"]


def test_a_lossy_export_is_gated_by_its_subset_accuracy(trained, tmp_path: Path) -> None:
    """INT8 on labelled multi-label images: the export's and PyTorch's subset accuracy, PyTorch's equal to
    ``cnnctl.predict``'s decisions scored against the label file."""
    import csv

    from multilabel_data import write_label_file
    from typer.testing import CliRunner

    from cnnctl.cli import app

    labels = write_label_file(tmp_path / "data", 60, seed=9)
    output = tmp_path / "model.int8.onnx"
    result = CliRunner().invoke(app, ["export", str(trained.best_path), "-f", "onnx-int8", "-o", str(output),
                                      "--data", str(labels), "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    shown = re.search(r"subset accuracy ([\d.]+)% \(PyTorch ([\d.]+)%", result.output)
    assert shown is not None, result.output
    with open(labels) as handle:
        rows = list(csv.DictReader(handle))
    given, _ = cnnctl.predict(trained.run_dir, [labels.parent / row["path"] for row in rows])
    truth = torch.tensor([[name in row["label"].split("|") for name in QUADRANTS] for row in rows])
    assert float(shown.group(2)) == pytest.approx(100 * float((given == truth).all(1).float().mean()), abs=0.01)
    document = json.loads((tmp_path / "model.preprocessing.json").read_text())
    entry = document["exports"]["model.int8.onnx"]["accuracy"]
    assert entry["checked"] and entry["measure"] == "subset accuracy" and entry["count"] == 60
    assert entry["accuracy"] == pytest.approx(float(shown.group(1)) / 100, abs=1e-4)


def test_export_refuses_label_decisions_unlike_pytorchs(trained) -> None:
    from cnnctl.errors import CnnctlError
    from cnnctl.exporter import compare_label_decisions

    meta = cnnctl.checkpoint.read_meta(trained.best_path)
    meta.thresholds, meta.label_count = [0.5] * 4, None
    expected = torch.tensor([[2.0, -2.0, 0.0, 1.0]])
    assert compare_label_decisions(meta, expected, expected + 5e-5, 1e-4) == 4  # 0.0 sits at the threshold
    with pytest.raises(CnnctlError, match="decides label 'nw' of verification image 0 unlike PyTorch"):
        compare_label_decisions(meta, expected, torch.tensor([[2.0, 2.0, 0.0, 1.0]]), 1e-4)
    meta.label_count = [1, 1]  # one label each: the most probable, so a change of order changes the decision
    expected = torch.tensor([[2.0, -2.0, -1.0, 1.0]])
    assert compare_label_decisions(meta, expected, expected + 5e-5, 1e-4) == 4
    near = torch.tensor([[2.0, -2.0, -1.0, 2.0 - 1e-5]])  # the two most probable within the tolerance: excused
    assert compare_label_decisions(meta, near, torch.tensor([[2.0, -2.0, -1.0, 2.0 + 1e-5]]), 1e-4) == 4
    with pytest.raises(CnnctlError, match="decides label 'ne' of verification image 0 unlike PyTorch"):
        compare_label_decisions(meta, expected, torch.tensor([[2.0, -2.0, -1.0, 2.5]]), 1e-4)


def test_tune_maximises_the_mean_average_precision(quadrants, tmp_path: Path) -> None:
    import csv

    from typer.testing import CliRunner

    from cnnctl.cli import app

    result = CliRunner().invoke(app, ["tune", "lenet5", "--dataset", "quadrants", "--task", "multilabel",
                                      "--epochs", "1", "--batch-size", "16", "--threads", "1", "--no-plots",
                                      "--out", str(tmp_path), "--trials", "2", "--pruner", "none", "--json",
                                      "--param", "lr=loguniform:1e-3:5e-3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["monitor"] == "val_map" and summary["direction"] == "maximize"
    for row in summary["trials"]:
        with open(Path(row["run_dir"]) / "metrics.csv", newline="") as handle:
            assert row["value"] == pytest.approx(max(float(r["val_map"]) for r in csv.DictReader(handle)))


def test_resume_continues_a_multilabel_run(quadrants, tmp_path: Path) -> None:
    first = cnnctl.train("lenet5", dataset="quadrants", out=str(tmp_path), **{**FAST, "epochs": 1})
    resumed = cnnctl.train(resume=first.run_dir, epochs=2)
    assert resumed.run_dir == first.run_dir and [row["epoch"] for row in resumed.history] == [1, 2]
    assert "val_map" in resumed.history[-1]
    meta = cnnctl.checkpoint.read_meta(resumed.last_path)
    assert meta.task == "multilabel" and meta.epoch == 2 and len(meta.thresholds) == 4
    assert json.loads((resumed.run_dir / "results.json").read_text())["task"] == "multilabel"


def test_a_label_file_with_several_labels_trains_multilabel(tmp_path: Path) -> None:
    from multilabel_data import write_label_file

    labels = write_label_file(tmp_path / "data", 100, seed=3, splits=True)
    messages: list[str] = []

    from cnnctl.progress import SilentReporter

    class Collect(SilentReporter):
        def message(self, text: str) -> None:
            messages.append(text)

    run = cnnctl.train("lenet5", data=str(labels), out=str(tmp_path / "runs"), reporter=Collect(),
                       **{**FAST, "epochs": 2})
    said = [line for line in messages if line.startswith("multi-label task")]
    assert len(said) == 1 and "of 60 training images have several labels" in said[0]
    assert any(line.startswith("multi-label decisions keep to 1 to 2 labels per image, as the training images "
                               "have") for line in messages)
    assert not [line for line in messages if "no training image of class" in line]  # every label has images
    meta = cnnctl.checkpoint.read_meta(run.best_path)
    assert meta.task == "multilabel" and meta.classes == list(QUADRANTS)
    report = cnnctl.evaluate(run.run_dir)
    assert report["count"] == 20 and report["split"] == "test" and 0 <= report["map"] <= 1
    with pytest.raises(UsageError, match="several labels"):
        cnnctl.train("lenet5", data=str(labels), task="single", out=str(tmp_path / "runs"), **FAST)


def test_per_image_weights_weigh_the_multilabel_loss_too() -> None:
    from cnnctl.engine.components import training_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=generator)
    targets = (torch.rand(5, 3, generator=generator) > 0.5).float()

    def loss(*args: torch.Tensor) -> torch.Tensor:
        return training_loss(*args, "multilabel", None, 0.0)

    assert torch.allclose(loss(logits[:3], targets[:3]),
                          training_loss(logits, targets, "multilabel", None, 0.0, torch.tensor([1.0, 1, 1, 0, 0])))
    doubled = training_loss(logits, targets, "multilabel", None, 0.0, torch.tensor([2.0, 1, 1, 1, 1]))
    assert torch.allclose(doubled, loss(torch.cat([logits, logits[:1]]), torch.cat([targets, targets[:1]])))


def test_the_server_rows_are_predicts_json_rows(trained, tmp_path: Path) -> None:
    from cnnctl.engine.predict import Predictor, load_for_inference, predictions_json
    from cnnctl.serve.app import rows

    model, _ = load_for_inference(trained.best_path)
    predictor = Predictor(model, model.cnnctl_meta)
    paths, _ = write_pngs(tmp_path / "images", count=2)
    predictions = list(predictor.predict_files(paths))
    assert rows(predictions) == json.loads(predictions_json(predictions, multilabel=True))
    assert set(rows(predictions)[0]) == {"path", "labels", "probabilities", "error"}
    with pytest.raises(UsageError, match="--reject-below .* does not apply to multi-label"):
        Predictor(model, model.cnnctl_meta, reject_below=0.5)


def test_the_servers_model_page_states_the_decision_rule(trained) -> None:
    import logging

    from fastapi.testclient import TestClient

    from cnnctl.engine.predict import Predictor, load_for_inference
    from cnnctl.serve.app import create_app
    from cnnctl.serve.batcher import Batcher
    from cnnctl.serve.settings import ServeSettings

    model, _ = load_for_inference(trained.best_path)
    meta = model.cnnctl_meta
    predictor = Predictor(model, meta)
    app = create_app(predictor, Batcher(predictor, batch_size=4, max_wait_s=0.01, capacity=8), ServeSettings(),
                     logging.getLogger("test"))
    page = TestClient(app).get("/model").json()
    assert page["task"] == "multilabel" and page["thresholds"] == meta.thresholds
    assert page["label_count"] == meta.label_count == [1, 2]


def test_task_multilabel_trains_single_label_data_with_a_sigmoid_each(micro_digits, tmp_path: Path) -> None:
    run = cnnctl.train("lenet5", dataset="microdigits", task="multilabel", out=str(tmp_path), **{**FAST, "epochs": 1})
    meta = cnnctl.checkpoint.read_meta(run.best_path)
    assert meta.task == "multilabel" and len(meta.thresholds) == 4 and meta.label_count == [1, 1]
    assert run.results["task"] == "multilabel" and 0 <= run.results["test_map"] <= 1
