"""How the training images look is stored in the checkpoint, and ``predict`` warns once when the images it is
given differ clearly: a digit drawn black on white for a model trained on white-on-black digits (real
handwritten digits: scikit-learn's 8x8 digits, upscaled to MNIST's 28x28 layout)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl import checkpoint
from cnnctl.cli import app
from cnnctl.data.image_stats import InputCheck, training_image_stats

CLASSES = (0, 1, 2)


def mnist_like_digits(count_per_class: int, offset: int = 0) -> list[tuple[int, np.ndarray]]:
    """Real handwritten digits as MNIST lays them out: a 20x20 white-on-black digit centred in 28x28."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    taken: dict[int, int] = {}
    found = []
    for image, target in zip(digits.images, digits.target):
        target = int(target)
        if target not in CLASSES:
            continue
        taken[target] = taken.get(target, 0) + 1
        if not offset < taken[target] <= offset + count_per_class:
            continue
        small = Image.fromarray((image / 16 * 255).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        canvas = np.zeros((28, 28), dtype=np.uint8)
        canvas[4:24, 4:24] = np.asarray(small)
        found.append((target, canvas))
    return found


def write_digits(root: Path, digits: list[tuple[int, np.ndarray]], *, invert: bool = False) -> list[Path]:
    from PIL import Image

    paths = []
    for index, (target, pixels) in enumerate(digits):
        folder = root / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:04d}.png"
        Image.fromarray(255 - pixels if invert else pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "data" / "train", mnist_like_digits(60))
    run = cnnctl.train("lenet5", data=str(root / "data"), epochs=3, batch_size=16, lr=0.01, out=str(root / "runs"),
                       plots=False, threads=1)
    return run.best_path


def test_training_stores_the_statistics_of_its_images(digit_model: Path) -> None:
    stats = checkpoint.read_meta(digit_model).image_stats
    assert stats is not None
    images = np.stack([pixels for _, pixels in mnist_like_digits(60)]).astype(np.float64) / 255  # as trained on
    # an independent computation over the same images (the folder's PNGs decode to these pixels exactly; the
    # validation images held out are 10% of them, so the percentiles agree closely rather than exactly)
    brightness = images.mean(axis=(1, 2))
    assert stats["brightness_p50"] == pytest.approx(np.percentile(brightness, 50), abs=0.02)
    assert stats["border_p90"] == pytest.approx(0.0, abs=0.01)  # MNIST's black margin
    # and exactly on a tensor, against numpy
    tensor = torch.from_numpy((images * 255).round().astype(np.uint8)).unsqueeze(1)
    measured = training_image_stats(tensor)
    assert measured["brightness_p01"] == pytest.approx(np.quantile(brightness, 0.01), abs=1e-4)
    assert measured["brightness_p99"] == pytest.approx(np.quantile(brightness, 0.99), abs=1e-4)


def test_predict_warns_once_about_inverted_digits_and_not_about_normal_ones(digit_model: Path,
                                                                            tmp_path: Path) -> None:
    unseen = mnist_like_digits(5, offset=60)
    normal = write_digits(tmp_path / "normal", unseen)
    inverted = write_digits(tmp_path / "drawn", unseen, invert=True)
    runner = CliRunner()

    plain = runner.invoke(app, ["predict", str(digit_model), str(tmp_path / "normal")])
    assert plain.exit_code == 0, plain.output
    assert "warning" not in plain.stderr
    assert len(normal) == 15

    drawn = runner.invoke(app, ["predict", str(digit_model), str(tmp_path / "drawn"), str(normal[0])])
    assert drawn.exit_code == 0, drawn.output
    lines = [line for line in drawn.stderr.splitlines() if line.startswith("warning")]
    assert lines == [f"warning: {len(inverted)} of {len(inverted) + 1} images have a light background, but the model "
                     "was trained on images with a dark one (light strokes on black) and will likely be wrong on "
                     "them: invert their colours first"]


def test_much_brighter_images_warn_and_old_checkpoints_do_not(digit_model: Path, tmp_path: Path) -> None:
    from PIL import Image

    bright = np.zeros((28, 28), dtype=np.uint8)
    bright[3:25, 3:25] = 230  # a dark margin (not inverted), but far brighter than any training digit
    Image.fromarray(bright).save(tmp_path / "bright.png")
    result = CliRunner().invoke(app, ["predict", str(digit_model), str(tmp_path / "bright.png")])
    assert result.exit_code == 0, result.output
    assert "warning: 1 of 1 image is much brighter than the training images" in result.stderr

    model, meta = checkpoint.load(digit_model)
    meta.image_stats = None  # as written before the statistics existed
    old = checkpoint.save(tmp_path / "old.safetensors", model, meta)
    stored = json.loads(checkpoint.read_meta(old).to_json())
    assert "image_stats" not in stored
    quiet = CliRunner().invoke(app, ["predict", str(old), str(tmp_path / "bright.png")])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_the_python_api_warns_too(digit_model: Path) -> None:
    model, _ = cnnctl.load(digit_model)
    digits = mnist_like_digits(2, offset=60)
    batch = torch.from_numpy(np.stack([pixels for _, pixels in digits])).unsqueeze(1)
    batch = torch.nn.functional.pad(batch, (2, 2, 2, 2))  # the folder was trained at lenet5's 32x32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cnnctl.predict(model, batch)  # white on black: no warning
    with pytest.warns(UserWarning, match="have a light background"):
        cnnctl.predict(model, 255 - batch)


def test_input_check_counts_each_kind_of_difference() -> None:
    stats = {"brightness_p01": 0.05, "brightness_p50": 0.13, "brightness_p99": 0.25, "border_p10": 0.0,
             "border_p50": 0.0, "border_p90": 0.01}
    check = InputCheck(stats)
    dark_digit = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    dark_digit[..., 8:20, 12:16] = 255
    check.add(dark_digit)
    assert check.warning() is None
    check.add(255 - dark_digit)
    assert (check.seen, check.inverted) == (2, 1)
    assert InputCheck(None).warning() is None  # nothing measured: nothing to say


def test_a_damaged_statistic_is_refused_naming_the_field(digit_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    document = json.loads(checkpoint.read_meta(digit_model).to_json())
    document["image_stats"]["border_p50"] = 7
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(digit_model)), str(bad), metadata={"cnnctl": json.dumps(document)})
    with pytest.raises(cnnctl.errors.CheckpointError, match="image_stats.border_p50"):
        checkpoint.read_meta(bad)
