"""The pictures a run leaves: errors visible in the confusion matrix, correct examples in predictions.png,
file names in input order on ``predict --plot``, lr-find.png beside its run. Each PNG is read back with PIL and
checked on what can be checked: pixel colours, and the figure's text objects captured before saving."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnctl import plots
from cnnctl.cli import app
from cnnctl.data.base import Preprocessing
from cnnctl.engine.predict import Prediction
from cnnctl.recipe.config_file import build_train_config

FAST = {"dataset": "microdigits", "batch_size": 16, "threads": 1}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure the plots module saves, in order (still saved to its file)."""
    seen: list[Any] = []
    original = plots._save

    def capture(figure: Any, path: Path) -> Path:
        seen.append(figure)
        return original(figure, path)

    monkeypatch.setattr(plots, "_save", capture)
    return seen


def pixel(image: Image.Image, axis: Any, x: float, y: float) -> np.ndarray:
    """The saved image's colour at data point (x, y) of ``axis`` (the PNG has the figure's size and dpi)."""
    left, bottom = axis.transData.transform((x, y))
    return np.asarray(image.convert("RGB"), dtype=float)[int(round(image.height - bottom)), int(round(left))]


def test_confusion_errors_stand_out_from_empty_cells_and_from_the_diagonal(figures, tmp_path: Path) -> None:
    matrix = np.diag([95, 100, 90, 100])
    matrix[0, 1] = 5  # 5 % of class 0
    matrix[2, 3] = 1  # about 1 % of class 2
    path = plots.plot_confusion(matrix, ["a", "b", "c", "d"], tmp_path / "confusion.png")
    image = Image.open(path)
    axis = figures[0].axes[0]
    corner = -0.3  # sample off the cell's centre, where its count is written

    def colour(row: int, col: int) -> np.ndarray:
        return pixel(image, axis, col + corner, row + corner)

    white = np.array([255.0, 255.0, 255.0])
    empty, error, small_error, diagonal = colour(1, 0), colour(0, 1), colour(2, 3), colour(1, 1)
    assert np.abs(empty - white).max() < 10
    assert np.linalg.norm(error - empty) > 150 and error[0] > error[2] + 80  # clearly red
    assert np.linalg.norm(small_error - empty) > 60 and small_error[0] > small_error[2] + 40
    assert diagonal[2] > diagonal[0] + 80  # blue
    written = [text.get_text() for text in axis.texts]
    assert sorted(written) == sorted(["95", "5", "100", "90", "1", "100"])
    assert len(figures[0].axes) == 3  # the matrix and two colour scales
    perfect = plots.plot_confusion(np.diag([3, 4]), ["a", "b"], tmp_path / "perfect.png")
    assert Image.open(perfect).size[0] > 200
    assert len(figures[1].axes) == 2  # no errors, no error scale


def test_the_grid_keeps_correct_examples_however_many_the_mistakes() -> None:
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 10, (200,), generator=generator).tolist()
    predicted = [(t + 1) % 10 if i % 10 < 6 else t for i, t in enumerate(truth)]  # 120 of 200 wrong
    confidence = torch.rand(200, generator=generator).tolist()
    chosen = plots.mistakes_first(predicted, truth, confidence, 32)
    wrong = sorted((i for i in range(200) if predicted[i] != truth[i]), key=lambda i: -confidence[i])
    assert chosen[:24] == wrong[:24]  # three quarters: the most confident mistakes
    correct = chosen[24:]
    assert len(correct) == 8 and all(predicted[i] == truth[i] for i in correct)
    assert len({truth[i] for i in correct}) == 8  # from different classes
    few = plots.mistakes_first([1, 0, 0, 0], [0, 0, 0, 0], [0.9] * 4, 3)
    assert few[0] == 0 and len(few) == 3  # few mistakes: all of them, then correct ones


def test_predict_plot_names_each_file_in_input_order(figures, tmp_path: Path) -> None:
    from torchvision.io import write_png

    classes = ["zero", "one", "two"]
    order = [("two", "z-first.png", 2), ("zero", "b.png", 1), ("one", "a-rather-long-file-name-for-a-tile.png", 1),
             ("zero", "c.png", 0)]
    predictions = []
    for index, (folder, name, label) in enumerate(order):
        (tmp_path / folder).mkdir(exist_ok=True)
        write_png(torch.full((1, 28, 28), 40 * index, dtype=torch.uint8), str(tmp_path / folder / name))
        predictions.append(Prediction(str(tmp_path / folder / name), label, classes[label], 0.8))
    meta = SimpleNamespace(classes=classes, preprocessing=Preprocessing(channels=1, image_size=(28, 28)))
    path = plots.plot_file_predictions(predictions, meta, tmp_path / "grid.png", limit=3)
    assert Image.open(path).size[0] > 200
    tiles = [axis for axis in figures[0].axes if axis.get_title()]
    titles = [axis.get_title().split("\n") for axis in tiles]
    assert [lines[0] for lines in titles] == ["z-first.png", "b.png", plots.short_name(order[2][1])]
    assert plots.short_name(order[2][1]).endswith("e.png") and "…" in plots.short_name(order[2][1])
    assert [lines[1] for lines in titles] == ["two 80%", "one 80%", "one 80%"]
    red = [axis.title.get_color() == "red" for axis in tiles]
    assert red == [False, True, False]  # b.png sits in zero/ but was predicted one
    assert titles[1][2] == "(true zero)"
    assert "the first 3 of 4 images, in input order" in figures[0]._suptitle.get_text().replace("\n", " ")


def test_lr_find_draws_beside_the_runs_of_its_options_and_not_in_the_current_folder(
        micro_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnctl.engine.lr_find import lr_find

    config = build_train_config({"arch": "simplecnn", "out": str(tmp_path / "runs"), **FAST}, source="test")
    result = lr_find(config, steps=12, plot=True)
    assert result.plot == tmp_path / "runs" / "simplecnn-microdigits" / "lr-find.png"
    assert Image.open(result.plot).size[0] > 200
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    invoked = CliRunner().invoke(app, ["lr-find", "simplecnn", "--dataset", "microdigits", "--batch-size", "16",
                                       "--threads", "1", "--steps", "12", "--out", str(tmp_path / "cli"),
                                       "--name", "sweep"])
    assert invoked.exit_code == 0, invoked.output
    assert list((tmp_path / "here").iterdir()) == []
    assert Image.open(tmp_path / "cli" / "sweep" / "lr-find.png").size[0] > 200
    assert f"wrote {tmp_path / 'cli' / 'sweep' / 'lr-find.png'}" in invoked.stderr


def test_lr_auto_draws_its_sweep_into_the_run_folder(micro_digits, tmp_path: Path) -> None:
    import cnnctl

    run = cnnctl.train("simplecnn", epochs=1, lr="auto", out=str(tmp_path), **FAST)
    assert Image.open(run.run_dir / "lr-find.png").size[0] > 200


def test_lr_find_that_cannot_write_beside_the_runs_says_so_in_one_line(micro_digits, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    invoked = CliRunner().invoke(app, ["lr-find", "simplecnn", "--dataset", "microdigits", "--threads", "1",
                                       "--steps", "12", "--out", str(tmp_path / "a-file")])
    assert invoked.exit_code == 2  # a usage error
    lines = invoked.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write lr-find.png into" in lines[0] and "--plot PNG" in lines[0]
