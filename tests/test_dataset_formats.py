"""Every built-in dataset format, written tiny but for real (IDX .gz, CIFAR pickle tarballs, SVHN .mat), through the
real loaders and the CLI: download from a mirror folder → train one epoch → eval → predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import Written, register_tiny, write_cifar10, write_cifar100, write_idx, write_svhn
from typer.testing import CliRunner

from cnnctl import checkpoint, registry
from cnnctl.cli import app
from cnnctl.data.cifar import CIFAR10, CIFAR100, CIFAR100_COARSE
from cnnctl.data.idx import FASHION_MNIST, KMNIST
from cnnctl.data.splits import load_split
from cnnctl.data.svhn import SVHN

runner = CliRunner()

# tiny name → (the real spec it copies, which written set holds its files)
TINY = {
    "tiny-fashion-mnist": (FASHION_MNIST, "idx"),
    "tiny-kmnist": (KMNIST, "idx"),
    "tiny-cifar10": (CIFAR10, "cifar10"),
    "tiny-cifar100": (CIFAR100, "cifar100"),
    "tiny-cifar100-coarse": (CIFAR100_COARSE, "cifar100"),
    "tiny-svhn": (SVHN, "svhn"),
}


@pytest.fixture(scope="session")
def format_mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Written]]:
    """A mirror folder with one sub-folder per tiny dataset (``<mirror>/<dataset>/<official file name>``)."""
    base = tmp_path_factory.mktemp("format-mirror")
    written = {"idx": write_idx(base / "tiny-fashion-mnist"), "cifar10": write_cifar10(base / "tiny-cifar10"),
               "cifar100": write_cifar100(base / "tiny-cifar100"), "svhn": write_svhn(base / "tiny-svhn")}
    write_idx(base / "tiny-kmnist")  # same seed, same bytes
    return base, written


@pytest.fixture()
def tiny(format_mirror: tuple[Path, dict[str, Written]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mirror, written = format_mirror
    for name, (real, kind) in TINY.items():
        storage = "tiny-cifar100" if name == "tiny-cifar100-coarse" else None
        register_tiny(real, name, written[kind].files, storage=storage)
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CNNCTL_MIRROR", str(mirror))
    yield written
    for name in TINY:
        registry._DATASETS.pop(name, None)


def expected_arrays(written: Written, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    labels = written.coarse[split] if name.endswith("coarse") else written.labels[split]
    return written.images[split], labels


@pytest.mark.parametrize("name", list(TINY))
def test_loaders_return_exactly_the_pixels_and_labels_written(tiny, name: str, tmp_path: Path) -> None:
    real, kind = TINY[name]
    spec = registry.get_dataset_spec(name)
    for split in ("train", "test"):
        data = load_split(spec, split)
        images, labels = expected_arrays(tiny[kind], name, split)
        assert data.images.dtype == torch.uint8 and tuple(data.images.shape[1:]) == real.image_shape
        assert torch.equal(data.images, torch.from_numpy(images)), split
        assert data.labels.tolist() == [int(v) for v in labels]
        assert data.classes == real.classes
    if name == "tiny-cifar100-coarse":  # shares cifar100's download: no second copy
        assert not (tmp_path / "data" / name).exists()
        assert (tmp_path / "data" / "tiny-cifar100" / "cifar-100-python.tar.gz").is_file()


@pytest.mark.parametrize("name", ["tiny-fashion-mnist", "tiny-kmnist", "tiny-cifar10", "tiny-cifar100",
                                  "tiny-svhn"])
def test_download_train_eval_predict_through_the_cli(tiny, name: str, tmp_path: Path) -> None:
    from torchvision.io import write_png

    real, kind = TINY[name]
    downloaded = runner.invoke(app, ["download", name])
    assert downloaded.exit_code == 0, downloaded.output
    assert "ready" in downloaded.stdout
    trained = runner.invoke(app, ["train", "lenet5", "--dataset", name, "--epochs", "1", "--batch-size", "32",
                                  "--out", str(tmp_path / "runs"), "--quiet"])
    assert trained.exit_code == 0, trained.output
    run_dir = tmp_path / "runs" / f"lenet5-{name}" / "1"
    meta = checkpoint.read_meta(run_dir / "best.safetensors")
    assert meta.classes == list(real.classes) and meta.dataset == name
    assert meta.preprocessing.channels == real.image_shape[0]
    assert meta.preprocessing.mean == real.mean and meta.preprocessing.input_shape[1:] == (32, 32)
    assert json.loads((run_dir / "config.json").read_text())["augment"] == real.augment  # the default, recorded

    evaluated = runner.invoke(app, ["eval", str(run_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    results = json.loads((run_dir / "results.json").read_text())
    assert report["count"] == 100 and report["accuracy"] == pytest.approx(results["test_acc"], abs=1e-12)

    images, _ = expected_arrays(tiny[kind], name, "test")
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index in range(12):
        write_png(torch.from_numpy(images[index].copy()), str(folder / f"{index:02d}.png"))
    output = tmp_path / "predictions.csv"
    predicted = runner.invoke(app, ["predict", str(run_dir), str(folder), "--output", str(output)])
    assert predicted.exit_code == 0, predicted.output
    rows = sorted(csv.DictReader(output.open()), key=lambda row: row["path"])
    assert len(rows) == 12 and not any(row["error"] for row in rows)
    assert all(row["class"] == real.classes[int(row["label"])] for row in rows)
    # the PNG path and the in-memory path give the same predictions
    from cnnctl.data.loader import fit_to_input
    from cnnctl.engine.predict import Predictor

    model, meta = checkpoint.load(run_dir / "best.safetensors")
    fitted = fit_to_input(torch.from_numpy(images[:12].copy()), meta.preprocessing)
    logits = model(Predictor(model, meta).normalize(fitted))
    assert [int(row["label"]) for row in rows] == logits.argmax(1).tolist()


def test_cifar_default_augmentation_and_svhn_without_flips() -> None:
    assert CIFAR10.augment == CIFAR100.augment == "crop-flip"
    assert SVHN.augment == "shift" and FASHION_MNIST.augment == KMNIST.augment == "none"
    assert len(CIFAR100.classes) == 100 and len(set(CIFAR100.classes)) == 100
    assert len(CIFAR100_COARSE.classes) == 20 and CIFAR100_COARSE.storage_name == "cifar100"


def test_list_datasets_shows_sizes_and_what_is_local(tiny, tmp_path: Path) -> None:
    listed = runner.invoke(app, ["list", "datasets", "--json"])
    rows = {row["name"]: row for row in json.loads(listed.stdout)["datasets"]}
    for name in ("mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "cifar100-coarse", "svhn", "folder"):
        assert name in rows, name
    assert rows["svhn"]["train_size"] == 73_257 and rows["svhn"]["test_size"] == 26_032
    assert rows["cifar100"]["classes"] == 100 and rows["cifar10"]["image_shape"] == [3, 32, 32]
    assert rows["folder"]["classes"] is None
    assert rows["tiny-cifar100-coarse"]["local"] is False
    assert runner.invoke(app, ["download", "tiny-cifar100"]).exit_code == 0
    rows = {row["name"]: row for row in json.loads(runner.invoke(app, ["list", "datasets", "--json"]).stdout)
            ["datasets"]}
    assert rows["tiny-cifar100"]["local"] is True and rows["tiny-cifar100-coarse"]["local"] is True
    assert rows["tiny-cifar10"]["local"] is False
    table = runner.invoke(app, ["list", "datasets"])
    assert table.exit_code == 0 and "73,257" in table.stdout


def test_download_all_and_check(tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(registry._DATASETS):
        if name not in TINY:
            monkeypatch.delitem(registry._DATASETS, name)  # the real ones would go to the internet
    result = runner.invoke(app, ["download", "--all"])
    assert result.exit_code == 0, result.output
    assert sorted(line.split(":")[0] for line in result.stdout.splitlines()) == sorted(TINY)
    assert (tmp_path / "data" / "tiny-cifar10" / "extracted" / "cifar-10-batches-py" / "test_batch").is_file()
    checked = runner.invoke(app, ["download", "tiny-svhn", "tiny-cifar10", "--check"])
    assert checked.exit_code == 0 and checked.stdout.count("verified") == 2
    damaged = tmp_path / "data" / "tiny-svhn" / "test_32x32.mat"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    failed = runner.invoke(app, ["download", "tiny-svhn", "--check"])
    assert failed.exit_code == 1 and "test_32x32.mat does not match its checksum" in failed.output


def test_import_from_a_renamed_archive_a_folder_and_a_wrong_file(tiny, format_mirror, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    mirror, _ = format_mirror
    monkeypatch.delenv("CNNCTL_MIRROR")
    renamed = tmp_path / "my-cifar.tgz"
    renamed.write_bytes((mirror / "tiny-cifar10" / "cifar-10-python.tar.gz").read_bytes())
    result = runner.invoke(app, ["download", "tiny-cifar10", "--from", str(renamed)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "tiny-cifar10" / "cifar-10-python.tar.gz").read_bytes() == renamed.read_bytes()

    # a torchvision-style tree: the official names somewhere below the folder, next to other datasets' files
    tree = tmp_path / "torchvision-data"
    (tree / "KMNIST" / "raw").mkdir(parents=True)
    (tree / "MNIST" / "raw").mkdir(parents=True)
    for path in (mirror / "tiny-kmnist").iterdir():
        (tree / "KMNIST" / "raw" / path.name).write_bytes(path.read_bytes())
        (tree / "MNIST" / "raw" / path.name).write_bytes(b"not these")  # same names, wrong checksums: skipped
    result = runner.invoke(app, ["download", "tiny-kmnist", "--from", str(tree)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["download", "tiny-kmnist", "--check"]).exit_code == 0

    wrong = runner.invoke(app, ["download", "tiny-svhn", "--from", str(renamed)])
    assert wrong.exit_code == 1 and "none of tiny-svhn's files" in wrong.output
    assert not list((tmp_path / "data" / "tiny-svhn").glob("*.mat*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = runner.invoke(app, ["download", "tiny-svhn", "--from", str(empty)])
    assert missing.exit_code == 1 and "could not find train_32x32.mat, test_32x32.mat" in missing.output


def test_svhn_without_scipy_says_how_to_install_it(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(app, ["download", "tiny-svhn"]).exit_code == 0
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)  # what an environment without scipy sees
    result = runner.invoke(app, ["train", "lenet5", "--dataset", "tiny-svhn", "--epochs", "1"])
    assert result.exit_code == 1
    assert "needs scipy" in result.output and "pip install 'cnnctl[svhn]'" in result.output
