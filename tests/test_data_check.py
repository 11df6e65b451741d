"""``cnnctl check``: data hygiene found by decoding every file, compared with what the folder was built to hold;
the metrics of imbalanced data (balanced accuracy, macro-F1) against scikit-learn; sizes in 10^6 bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnctl.data.folder import check_folder

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnctl", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/{a: 6 images, b: 3}, test/{a: 2}, with exactly: one image twice in a (one copy re-saved as BMP: the
    same pixels), one image of a also in b, one train image of a also in test, a truncated file, a FIFO, sizes
    28x28 and 30x20, modes L and RGB."""
    root = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(0)

    def image(seed: int, size: tuple[int, int] = (28, 28), rgb: bool = False) -> Image.Image:
        pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3) if rgb else size, dtype=np.uint8)
        return Image.fromarray(pixels)

    for split, name, count in (("train", "a", 5), ("train", "b", 3), ("test", "a", 1)):
        folder = root / split / name
        folder.mkdir(parents=True)
        for index in range(count):
            image(int(rng.integers(1 << 30))).save(folder / f"{name}{index}.png")
    image(7, (20, 30), rgb=True).save(root / "train" / "b" / "colour.png")  # a third b image, RGB 30x20
    (root / "train" / "b" / "b2.png").unlink()
    image(7, (20, 30), rgb=True).save(root / "train" / "a" / "a0-again.bmp")  # the same pixels as b/colour.png
    Image.open(root / "train" / "a" / "a1.png").save(root / "train" / "a" / "a1-copy.bmp")  # within a
    shutil.copy(root / "train" / "a" / "a2.png", root / "test" / "a" / "leaked.png")  # train/test leakage
    data = (root / "train" / "a" / "a3.png").read_bytes()
    (root / "train" / "a" / "broken.png").write_bytes(data[: len(data) // 2])
    os.mkfifo(root / "train" / "b" / "pipe.png")
    return root


def test_check_finds_exactly_the_planted_problems(messy_folder: Path) -> None:
    report = check_folder(messy_folder)
    assert report.classes == ["a", "b"]
    assert report.counts == {"train": {"a": 8, "b": 3}, "test": {"a": 2, "b": 0}}
    assert report.readable["train"] == {"a": 7, "b": 3}
    assert [Path(item["path"]).name for item in report.unreadable] == ["broken.png"]
    assert "truncated" in report.unreadable[0]["reason"]
    assert [Path(p).name for p in report.special] == ["pipe.png"]
    names = [sorted(Path(e["path"]).name for e in group) for group in report.duplicates_within_class]
    assert names == [["a1-copy.bmp", "a1.png"]]
    across = [sorted((e["class"], Path(e["path"]).name) for e in group) for group in report.duplicates_across_classes]
    assert across == [[("a", "a0-again.bmp"), ("b", "colour.png")]]
    leaks = [sorted((e["split"], Path(e["path"]).name) for e in group) for group in report.shared_between_splits]
    assert leaks == [[("test", "leaked.png"), ("train", "a2.png")]]
    assert report.sizes == {"28x28": 10, "30x20": 2}
    assert report.modes == {"L": 10, "RGB": 2}
    assert report.imbalance_ratio == pytest.approx(7 / 3)
    assert set(report.problems()) == {"unreadable files", "entries that are not regular files",
                                      "images repeated within a class", "images in more than one class",
                                      "images in more than one split (leakage)"}


def test_check_command_table_json_and_strict(messy_folder: Path) -> None:
    shown = run_cli("check", str(messy_folder))
    assert shown.returncode == 0, shown.stderr
    assert "problem: 1 images in more than one split (leakage)" in shown.stdout and "imbalance" in shown.stdout
    as_json = run_cli("check", str(messy_folder), "--json")
    document = json.loads(as_json.stdout)
    assert document["problems"]["images in more than one split (leakage)"] == 1
    assert document["counts"]["train"] == {"a": 8, "b": 3}
    strict = run_cli("check", str(messy_folder), "--strict")
    assert strict.returncode == 1
    assert strict.stderr.strip().splitlines()[-1].startswith("error: ") and "(--strict)" in strict.stderr
    clean = messy_folder.parent / "clean"
    shutil.copytree(messy_folder / "train", clean, ignore=shutil.ignore_patterns("*.bmp", "broken.png", "pipe.png"))
    assert run_cli("check", str(clean), "--strict").returncode == 0


def test_balanced_accuracy_and_macro_f1_match_scikit_learn() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from cnnctl.engine.metrics import balanced_accuracy, confusion_matrix, macro_f1

    generator = torch.Generator().manual_seed(1)
    targets = torch.cat([torch.zeros(300, dtype=torch.long), torch.randint(1, 4, (60,), generator=generator)])
    predictions = torch.where(torch.rand(360, generator=generator) < 0.8, targets, torch.zeros_like(targets))
    predictions[:5] = 4  # a class predicted but never true
    matrix = confusion_matrix(targets, predictions, 6)  # class 5: neither true nor predicted
    assert balanced_accuracy(matrix) == pytest.approx(balanced_accuracy_score(targets, predictions))
    assert macro_f1(matrix) == pytest.approx(f1_score(targets, predictions, average="macro"))


def test_topk_is_named_by_its_k() -> None:
    from cnnctl.engine.evaluate import evaluate

    model = torch.nn.Linear(4, 3)
    batches = [(torch.randn(10, 4), torch.randint(0, 3, (10,)))]
    result = evaluate(model, batches, 3)
    assert result.k == 3 and result.topk_name == "top-3" and result.topk == 1.0
    document = result.as_dict(["x", "y", "z"])
    assert "top3" in document and "top5" not in document
    assert {"balanced_accuracy", "macro_f1"} <= set(document)


def test_summary_sizes_are_megabytes_of_parameters() -> None:
    from cnnctl.summary import summarize_target

    summary = summarize_target("tv:resnet18", "3x224x224", 1000)
    assert summary.parameter_mb == pytest.approx(11_689_512 * 4 / 1e6)  # 46.76, as torchinfo reports
    buffers = summary.buffer_mb * 1e6
    assert buffers == pytest.approx(sum(b.numel() * b.element_size() for b in
                                        __import__("torchvision").models.resnet18().buffers()))


def test_export_of_a_folder_checkpoint_verifies_on_its_folder(tmp_path: Path) -> None:
    from dataset_files import write_image_folder

    from cnnctl import checkpoint
    from cnnctl.data.base import Preprocessing
    from cnnctl.exporter import export
    from cnnctl.models import build_model

    folder = tmp_path / "photos"
    write_image_folder(folder / "train", ("cat", "dog"), 6, grey=True)
    write_image_folder(folder / "test", ("cat", "dog"), 3, grey=True, seed=1)
    model = build_model("simplecnn", num_classes=2, in_channels=1)
    meta = checkpoint.CheckpointMeta("simplecnn", {}, ["cat", "dog"], Preprocessing(1, (28, 28)), dataset="folder",
                                     data_dir=str(folder), config={"seed": 0})
    path = checkpoint.save(tmp_path / "model.safetensors", model, meta)
    result = export(path, format="torchscript")
    assert result.verified_count == 6 and result.verified_on == f"6 images of the test split of {folder}"
    document = json.loads(result.preprocessing_path.read_text())
    assert any("EXIF orientation" in step for step in document["steps"])
    assert any("19595 R + 38470 G + 7471 B" in step for step in document["steps"])
    shutil.rmtree(folder)
    result = export(path, format="torchscript", output=tmp_path / "again.torchscript.pt")
    assert "random images" in result.verified_on and f"{folder}, is not on this machine" in result.verified_on
    assert "cnnctl download" not in result.verified_on


def test_a_large_group_of_identical_files_is_shown_by_its_first_files_and_its_size(tmp_path: Path) -> None:
    for index in range(7):
        (tmp_path / "data" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 9, dtype=np.uint8)).save(tmp_path / "data" / "a" / f"same{index}.png")
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(tmp_path / "data" / "a" / "other.png")
    shown = run_cli("check", str(tmp_path / "data"))
    assert shown.returncode == 0, shown.stderr
    group = next(line for line in shown.stdout.splitlines() if "same0.png" in line)
    assert group.count(".png") == 4 and group.endswith("= … (7 identical files in all)")
