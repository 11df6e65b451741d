"""The issue's acceptance run: a folder of ~200 generated PNGs in 3 classes trains mobilenet_v3_small and resnet18
(names from the architecture registry) to better than chance, and predicts to CSV with the folder's class names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from dataset_files import write_image_folder
from typer.testing import CliRunner

from cnnctl import checkpoint
from cnnctl.cli import app

runner = CliRunner()
CLASSES = ("apples", "leaves", "sky")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_image_folder(root / "train", CLASSES, 60, size=24, seed=11)
    write_image_folder(root / "test", CLASSES, 10, size=24, seed=12)
    return root


# small sizes keep CPU time low: resnet18 (3x3 stem, no max-pool) keeps full resolution in its first stage
@pytest.mark.parametrize(("arch", "img_size", "epochs"), [("mobilenet_v3_small", 32, 8), ("resnet18", 16, 3)])
def test_folder_trains_beyond_chance_and_predicts_with_class_names(photos: Path, tmp_path: Path, arch: str,
                                                                   img_size: int, epochs: int) -> None:
    trained = runner.invoke(app, ["train", arch, "--data", str(photos), "--img-size", str(img_size),
                                  "--epochs", str(epochs), "--batch-size", "16", "--out", str(tmp_path / "runs"),
                                  "--quiet"])
    assert trained.exit_code == 0, trained.output
    run_dir = tmp_path / "runs" / f"{arch}-{photos.name}" / "1"
    meta = checkpoint.read_meta(run_dir)
    assert meta.classes == list(CLASSES) and meta.preprocessing.input_shape == (3, img_size, img_size)

    evaluated = runner.invoke(app, ["eval", str(run_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["count"] == 30
    assert report["accuracy"] > 0.5, report  # chance is 1/3
    assert report["accuracy"] == pytest.approx(json.loads((run_dir / "results.json").read_text())["test_acc"])

    output = tmp_path / "predictions.csv"
    predicted = runner.invoke(app, ["predict", str(run_dir), str(photos / "test"), "--output", str(output)])
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 30 and all(row["class"] in CLASSES for row in rows)
    correct = sum(Path(row["path"]).parent.name == row["class"] for row in rows)
    assert correct / 30 == pytest.approx(report["accuracy"])  # predict on the files agrees with eval
