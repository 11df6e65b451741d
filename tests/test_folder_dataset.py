"""Folder datasets (the user's own images): layouts, formats, grey vs colour, bad folders, --limit, and the whole
train → eval (no flags) → predict path with the folder's class names."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from dataset_files import write_image_folder
from typer.testing import CliRunner

from cnnctl import checkpoint
from cnnctl.cli import app
from cnnctl.engine.fit import Trainer
from cnnctl.recipe.config import TrainConfig

runner = CliRunner()
CLASSES = ("cats", "dogs", "frogs")


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~200 PNGs in three class folders (sizes 16-24 px), plus files that must be skipped."""
    root = tmp_path_factory.mktemp("pets")
    write_image_folder(root, CLASSES, 67, size=16, seed=1)
    (root / "cats" / ".DS_Store").write_bytes(b"\0\0")
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("my pets")
    return root


def test_class_folders_train_eval_and_predict_with_the_folder_names(class_folder: Path, tmp_path: Path) -> None:
    result = invoke("train", "simplecnn", "--data", str(class_folder), "--epochs", "4", "--batch-size", "16",
                    "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    assert "skipped 3 hidden or non-image file(s)" in result.output
    run_dir = tmp_path / "runs" / f"simplecnn-{class_folder.name}" / "1"  # the run group names the folder
    meta = checkpoint.read_meta(run_dir / "best.safetensors")
    assert meta.classes == list(CLASSES) and meta.dataset == "folder"
    assert meta.data_dir == str(class_folder.resolve())
    assert meta.preprocessing.channels == 3 and meta.preprocessing.input_shape == (3, 28, 28)
    # no test/ folder: the run still ends with its result, the best epoch on the validation split
    results = json.loads((run_dir / "results.json").read_text())
    assert results["split"] == "val" and results["val_count"] == 20 and results["best_epoch"] == meta.epoch
    assert f"validation accuracy {results['val_acc']:.2%}" in result.output
    assert (run_dir / "confusion.png").is_file() and (run_dir / "predictions.png").is_file()

    evaluated = invoke("eval", str(run_dir), "--json")  # no flags: the folder comes from the checkpoint
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["count"] == 20 and report["split"] == "val"  # 10% of 201 held out for validation
    assert report["accuracy"] == pytest.approx(meta.metrics["val_acc"], abs=1e-12)
    assert report["accuracy"] == pytest.approx(results["val_acc"], abs=1e-12)
    shown = invoke("eval", str(run_dir))
    assert f"on {class_folder.name} validation split, held out in training (20 images)" in shown.stdout
    assert report["accuracy"] > 0.6  # chance is 1/3
    assert [row["class"] for row in report["per_class"]] == list(CLASSES)

    fresh = tmp_path / "new-photos"
    truth = write_image_folder(fresh, CLASSES, 10, size=20, seed=7)
    output = tmp_path / "predictions.csv"
    predicted = invoke("predict", str(run_dir), str(fresh), "--output", str(output))
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 30 and {row["class"] for row in rows} <= set(CLASSES)
    correct = sum(Path(row["path"]).parent.name == row["class"] for row in rows)
    assert correct / 30 > 0.6, rows
    assert sum(len(paths) for paths in truth.values()) == 30


def test_split_folders_with_mixed_formats_sizes_and_broken_files(tmp_path: Path) -> None:
    root = tmp_path / "animals"
    for split, count, seed in (("train", 30, 1), ("val", 6, 2), ("test", 8, 3)):
        write_image_folder(root / split, CLASSES, count, size=20, seed=seed)
    converted = 0
    for index, path in enumerate(sorted((root / "train").rglob("*.png"))):  # every format the issue names
        suffix = (".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".png")[index % 6]
        if suffix != ".png":
            from PIL import Image

            Image.open(path).save(path.with_suffix(suffix))
            path.unlink()
            converted += 1
    (root / "train" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "train" / "empty").mkdir()
    (root / "train" / "dogs" / ".hidden").mkdir()
    write_image_folder(root / "train" / "dogs" / ".hidden", ("x",), 2)
    result = invoke("train", "lenet5", "--data", str(root), "--epochs", "2", "--batch-size", "16",
                    "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    assert "could not read 1 image; left out:" in result.output and "broken.png" in result.output
    assert "class folder(s) without images left out: empty" in result.output
    run_dir = tmp_path / "runs" / "lenet5-animals" / "1"
    meta = checkpoint.read_meta(run_dir)
    assert meta.classes == list(CLASSES) and meta.preprocessing.input_shape == (3, 32, 32)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_count"] == 24
    evaluated = invoke("eval", str(run_dir), "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["count"] == 24 and report["accuracy"] == pytest.approx(results["test_acc"], abs=1e-12)
    val = json.loads(invoke("eval", str(run_dir), "--split", "val", "--json").stdout)
    assert val["count"] == 18 and val["accuracy"] == pytest.approx(meta.metrics["val_acc"], abs=1e-12)
    predicted = invoke("predict", str(run_dir), str(root / "train" / "cats"))
    assert predicted.exit_code == 0 and predicted.stdout.count("\n") == 1 + 30 + 1  # header, 30 images, broken


def test_grey_images_give_a_one_channel_model(tmp_path: Path) -> None:
    root = tmp_path / "grey"
    write_image_folder(root, ("dark", "mid", "light"), 20, size=12, grey=True)
    config = TrainConfig(arch="simplecnn", data_dir=str(root), epochs=1, batch_size=16, out=str(tmp_path / "runs"),
                         img_size=12, scheduler="none")
    trainer = Trainer(config)
    run = trainer.run()
    data = trainer.data
    assert data.preprocessing.channels == 1 and data.train.images.shape[1:] == (1, 12, 12)
    # mean/std of the training images, checked against a plain float computation
    pixels = data.train.images.double() / 255
    assert data.preprocessing.mean[0] == pytest.approx(float(pixels.mean()), abs=1e-5)
    assert data.preprocessing.std[0] == pytest.approx(float(pixels.std(unbiased=False)), abs=1e-5)
    assert data.preprocessing.pad == 8  # simplecnn takes 28x28: 12 + 2*8
    assert checkpoint.read_meta(run.best_path).preprocessing.channels == 1
    predicted = invoke("predict", str(run.best_path), str(root / "light"), "--json")
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.stdout)) == 20


def test_limit_trains_on_a_subset_and_eval_rebuilds_it(class_folder: Path, tmp_path: Path) -> None:
    config = TrainConfig(arch="simplecnn", data_dir=str(class_folder), epochs=1, limit=30, seed=3,
                         out=str(tmp_path / "runs"), scheduler="none")
    trainer = Trainer(config)
    run = trainer.run()
    assert len(trainer.data.train) == 30 and len(trainer.data.val) == 20
    report = json.loads(invoke("eval", str(run.run_dir), "--split", "train", "--json").stdout)
    assert report["count"] == 30


def test_limit_on_a_registered_dataset(tiny_digits, tmp_path: Path) -> None:
    config = TrainConfig(arch="simplecnn", dataset="tinydigits", epochs=1, limit=100, out=str(tmp_path / "runs"),
                         scheduler="none")
    trainer = Trainer(config)
    trainer.run()
    assert len(trainer.data.train) == 100 and len(trainer.data.val) == 200 and len(trainer.data.test) == 300


def test_decoding_in_workers_matches_the_main_process(class_folder: Path) -> None:
    from cnnctl.data.folder import decode_files, scan_folder

    scan = scan_folder(class_folder)
    files = [path for path, _ in scan.splits["train"][::5]] + [class_folder / "README.md"]
    in_workers = decode_files(files, (20, 20), workers=2)
    in_process = decode_files(files, (20, 20), workers=0)
    assert torch.equal(in_workers.images, in_process.images) and in_workers.kept == in_process.kept
    assert in_workers.images.shape == (len(files) - 1, 3, 20, 20) and not in_workers.grey
    assert [path.name for path, _ in in_workers.failures] == ["README.md"]
    from cnnctl.data.images import read_image, resize_to

    first = resize_to(read_image(files[0]), (20, 20))
    assert torch.equal(in_workers.images[0], first)


@pytest.mark.parametrize("case", ["missing", "no-images", "one-class", "both-options", "unknown-val-class"])
def test_folders_that_cannot_be_used(case: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    args = ["train", "simplecnn", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "runs")]
    expected = {"missing": "does not exist", "no-images": "no images found in",
                "one-class": "has images of only one class ('cats')", "both-options": "contradict each other",
                "unknown-val-class": "is not one of the classes"}[case]
    if case == "no-images":
        (root / "cats").mkdir(parents=True)
        (root / "cats" / "list.txt").write_text("x")
        (root / "dogs").mkdir()
    elif case == "one-class":
        write_image_folder(root, ("cats",), 3)
    elif case == "both-options":
        write_image_folder(root, CLASSES, 3)
        args += ["--dataset", "cifar10"]
    elif case == "unknown-val-class":
        write_image_folder(root / "train", CLASSES, 3)
        write_image_folder(root / "val", ("cats", "wolves"), 2)
    result = invoke(*args)
    assert result.exit_code != 0
    assert expected in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_eval_of_a_moved_folder_says_so_and_takes_data(class_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(class_folder, copy)
    run = Trainer(TrainConfig(arch="simplecnn", data_dir=str(copy), epochs=1, out=str(tmp_path / "runs"),
                              scheduler="none")).run()
    moved = tmp_path / "moved"
    copy.rename(moved)
    result = invoke("eval", str(run.best_path))
    assert result.exit_code == 2 and "does not exist" in result.output and "--data" in result.output
    everything = invoke("eval", str(run.best_path), "--data", str(moved), "--json")
    assert everything.exit_code == 0, everything.output
    assert json.loads(everything.stdout)["count"] == 201  # a folder given with --data: all of its images
    held_out = invoke("eval", str(run.best_path), "--data", str(moved), "--split", "val", "--json")
    report = json.loads(held_out.stdout)
    meta = checkpoint.read_meta(run.best_path)
    assert report["count"] == 20 and report["accuracy"] == pytest.approx(meta.metrics["val_acc"], abs=1e-12)
