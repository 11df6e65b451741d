"""Data sources: the same real digits as a class folder, a CSV, JSON Lines and Parquet train identically; label
files, tables and tar shards become the same items; every bad row is one line naming the file, the row and what
to do, before training starts; near-duplicates across splits are found; per-image weights reach the loss."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dataset_files import write_label_files
from PIL import Image
from real_mnist import write_mnist_folder
from safetensors.torch import load_file
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.data.folder import check_folder
from cnnctl.data.images import read_item_bytes
from cnnctl.data.items import MAX_LABEL_FILE_BYTES, label_index, scan_source
from cnnctl.engine.callbacks import Callback
from cnnctl.engine.fit import Trainer
from cnnctl.errors import DataError
from cnnctl.progress import Reporter

runner = CliRunner()
RUN = {"epochs": 2, "batch_size": 16, "threads": 1, "seed": 3, "plots": False, "deterministic": True}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real MNIST 0-3, 50 training and 10 test images per digit, as a class folder with a label file of each
    kind beside it (rows in reverse order: the order of the rows does not matter)."""
    root = write_mnist_folder(tmp_path_factory.mktemp("digits"), train_per_class=50, test_per_class=10)
    write_label_files(root)
    return root


def test_folder_csv_jsonl_and_parquet_train_identically(digits: Path, tmp_path: Path) -> None:
    runs = {name: cnnctl.train("lenet5", data=str(digits / name) if name else str(digits), out=str(tmp_path), **RUN)
            for name in ("", "labels.csv", "labels.jsonl", "digits.parquet")}
    folder = runs[""]
    assert folder.results["test_count"] == 40 and folder.results["test_acc"] > 0.5
    reference = load_file(str(folder.last_path))
    for name, run in runs.items():
        assert run.results == folder.results, name
        assert [row["train_loss"] for row in run.history] == [row["train_loss"] for row in folder.history], name
        weights = load_file(str(run.last_path))
        assert all(torch.equal(weights[key], reference[key]) for key in reference), name
    # eval finds a label file's images again through the checkpoint
    result = runner.invoke(app, ["eval", str(runs["labels.csv"].run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == pytest.approx(folder.results["test_acc"])


def test_a_saved_hugging_face_dataset_gives_the_folders_images(digits: Path, tmp_path: Path) -> None:
    import datasets

    folder = scan_source(digits)
    parts = {}
    for split in ("train", "test"):
        items = folder.splits[split]
        parts[split] = datasets.Dataset.from_dict(
            {"image": [{"bytes": read_item_bytes(path), "path": None} for path, _ in items],
             "label": [label for _, label in items]},
            features=datasets.Features({"image": datasets.Image(),
                                        "label": datasets.ClassLabel(names=list(folder.classes))}))
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "hf"))
    parts["train"].to_parquet(str(tmp_path / "train.parquet"))
    table = scan_source(tmp_path / "hf")
    assert table.classes == folder.classes and table.kind == "arrow"
    for split in ("train", "test"):
        assert [label for _, label in table.splits[split]] == [label for _, label in folder.splits[split]]
        assert [read_item_bytes(image) for image, _ in table.splits[split]] == \
            [read_item_bytes(path) for path, _ in folder.splits[split]]
    parquet = scan_source(tmp_path / "train.parquet")  # ClassLabel names from the Parquet metadata
    assert parquet.classes == folder.classes and len(parquet.splits["train"]) == 200


def test_tar_shards_hold_the_folders_images_and_stream(digits: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    for split in ("train", "test"):
        files = sorted((digits / split).rglob("*.png"))
        for number in range(2):
            with tarfile.open(shards / f"{split}-{number:03d}.tar", "w") as archive:
                for path in files[number::2]:
                    key = f"{path.parent.name}_{path.stem}"
                    archive.add(path, arcname=f"{key}.png")
                    add_member(archive, f"{key}.cls", path.parent.name.encode())
    scan = scan_source(shards)
    folder = scan_source(digits)
    assert scan.kind == "shards" and scan.classes == folder.classes
    assert {split: len(items) for split, items in scan.splits.items()} == {"train": 200, "test": 40}
    assert sorted(read_item_bytes(image) for image, _ in scan.splits["test"]) == \
        sorted(read_item_bytes(path) for path, _ in folder.splits["test"])
    assert len(scan_source(f"{shards}/test-*.tar", min_classes=1).splits["test"]) == 40
    streamed = cnnctl.train("lenet5", data=str(shards), cache="none", out=str(tmp_path / "a"), **RUN)
    memory = cnnctl.train("lenet5", data=str(shards), cache="memory", out=str(tmp_path / "b"), **RUN)
    assert streamed.results == memory.results


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_an_image_that_breaks_during_a_streamed_epoch_is_skipped_and_counted(digits: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for path in (digits / "train").rglob("*.png"):
        target = data / path.relative_to(digits)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    names = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    (data / "labels.csv").write_text("path,label\n" + "".join(f"{n},{n.split('/')[1]}\n" for n in names))

    class BreakOne(Callback):
        def on_fit_start(self, trainer) -> None:
            (data / names[0]).write_bytes(b"not an image any more")

    messages = Messages()
    run = cnnctl.train("lenet5", data=str(data / "labels.csv"), cache="none", epochs=2, threads=1, plots=False,
                       val_split=0, out=str(tmp_path / "runs"), reporter=messages, callbacks=[BreakOne()])
    assert len(run.history) == 2
    skipped = [line for line in messages.lines if "could not be read while streaming" in line]
    assert skipped == [f"epoch {epoch}: skipped 1 training image(s) that could not be read while streaming"
                       for epoch in (1, 2)]


# ------------------------------------------------------------------------------------------------ bad input


def bad_label_file(root: Path, kind: str) -> tuple[Path, str]:
    """A label file in ``root`` with one problem of ``kind``, and what the message must say."""
    (root / "data" / "a").mkdir(parents=True)
    for name in ("x.png", "y.png"):
        Image.fromarray(np.full((8, 8), 40 if name == "x.png" else 200, np.uint8)).save(root / "data" / "a" / name)
    good = "a/x.png,cat\na/y.png,dog\n"
    data = root / "data"
    if kind == "missing":
        text, expect = good + "a/z.png,cat\n", "row 4: a/z.png does not exist"
    elif kind == "unreadable":
        os.mkfifo(data / "a" / "fifo.png")
        text, expect = good + "a/fifo.png,cat\n", "row 4: a/fifo.png is not a regular file"
    elif kind == "parent":
        text, expect = good + "../../etc/passwd,cat\n", "row 4: ../../etc/passwd leads out of"
    elif kind == "absolute":
        text, expect = good + "/etc/passwd,cat\n", "row 4: /etc/passwd is an absolute path"
    elif kind == "symlink":
        (data / "a" / "out.png").symlink_to("/etc/passwd")
        text, expect = good + "a/out.png,cat\n", "row 4: a/out.png is a symlink out of"
    elif kind == "twice":
        text, expect = good + "a/x.png,dog\n", "a/x.png is listed twice with different labels (row 2: cat, row 4: dog)"
    elif kind == "empty-label":
        text, expect = good + "a/x.png, \n", "row 4: the label is empty"
    elif kind == "split":
        text, expect = "path,label,split\na/x.png,cat,train\na/y.png,dog,training\n", \
            "row 3: split 'training' is not train, val or test"
    elif kind == "no-path":
        text, expect = "file,label\na/x.png,cat\n", "row 1: the header has no 'path' column (it has 'file', 'label')"
    elif kind == "no-label":
        text, expect = "path,class_name\na/x.png,cat\n", "row 1: the header has no 'label' column"
    else:
        raise AssertionError(kind)
    label_file = data / "labels.csv"
    label_file.write_text("path,label\n" + text if not text.startswith(("path,", "file,")) else text)
    return label_file, expect


@pytest.mark.parametrize("kind", ["missing", "unreadable", "parent", "absolute", "symlink", "twice", "empty-label",
                                  "split", "no-path", "no-label"])
def test_a_bad_row_is_one_line_naming_the_file_and_row_before_training(tmp_path: Path, kind: str) -> None:
    label_file, expect = bad_label_file(tmp_path, kind)
    result = runner.invoke(app, ["train", "lenet5", "--data", str(label_file), "--epochs", "1",
                                 "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(label_file) in lines[0] and expect in lines[0], result.output
    assert " — " in lines[0]  # what to do
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_a_huge_label_file_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    huge = tmp_path / "labels.csv"
    with open(huge, "wb") as handle:  # sparse: 2 GiB long, nothing written
        handle.truncate(2 * 2**30)
    assert huge.stat().st_size > MAX_LABEL_FILE_BYTES
    result = runner.invoke(app, ["check", "--data", str(huge)])
    assert result.exit_code == 1
    assert f"{huge}: 2.0 GiB, larger than the 512 MiB a label file may have; not read" in result.output


def test_a_shard_member_that_is_not_an_image_is_named(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, "PNG")
    with tarfile.open(tmp_path / "train-000.tar", "w") as archive:
        add_member(archive, "k1.png", buffer.getvalue())
        add_member(archive, "k1.cls", b"0")
        add_member(archive, "k2.png", b"#!/bin/sh\necho not a picture\n")
        add_member(archive, "k2.cls", b"1")
    result = runner.invoke(app, ["train", "lenet5", "--data", str(tmp_path / "train-000.tar"), "--epochs", "1",
                                 "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'train-000.tar'} member 3 (k2.png): a text file, not an image — remove the member" \
        in result.output
    assert not (tmp_path / "runs").exists()


def test_a_jsonl_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "labels.jsonl").write_text('{"path": "a.png", "label": "cat"}\n{"path": "b.png", label}\n')
    with pytest.raises(DataError, match=r"labels.jsonl line 2: not JSON"):
        scan_source(tmp_path / "labels.jsonl")


# ------------------------------------------------------------------------------------------------ the rest


def test_near_duplicates_across_splits_are_reported(digits: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for path in sorted(digits.rglob("*.png"))[::4]:
        target = root / path.relative_to(digits)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    original = sorted((root / "train" / "2").glob("*.png"))[0]
    pixels = np.asarray(Image.open(original))
    Image.fromarray(pixels).save(root / "test" / "2" / "recompressed.jpg", quality=60)
    Image.fromarray(np.clip(pixels.astype(int) + 20, 0, 255).astype(np.uint8)).save(root / "test" / "2" / "lit.png")
    report = check_folder(root)
    pairs = {(Path(p["path"]).name, Path(p["other_path"]).name) for p in report.near_duplicates_across_splits}
    assert pairs == {(original.name, "recompressed.jpg"), (original.name, "lit.png")}
    assert report.problems()["near-duplicate pairs across splits"] == 2
    assert check_folder(root, near_distance=-1).near_duplicates_across_splits == []


def test_multi_label_rows_and_weights(tmp_path: Path) -> None:
    for name, value in (("x.png", 0), ("y.png", 255), ("z.png", 128)):
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("label,weight,path\ncat|dog,2,x.png\ndog,,y.png\ncat,0.5,z.png\n")
    scan = scan_source(tmp_path / "labels.csv")
    assert scan.multilabel and scan.classes == ("cat", "dog")
    assert [(Path(str(image)).name, label) for image, label in scan.splits["train"]] == [
        ("z.png", (0,)), ("x.png", (0, 1)), ("y.png", (1,))]
    assert scan.weights == {str(tmp_path / "x.png"): 2.0, str(tmp_path / "z.png"): 0.5}
    assert label_index([(0, 1), (1,)], 2, True).tolist() == [[1.0, 1.0], [0.0, 1.0]]
    (tmp_path / "labels.jsonl").write_text(json.dumps({"path": "x.png", "label": ["dog", "cat"]}) + "\n"
                                           + json.dumps({"path": "y.png", "label": "dog"}) + "\n")
    assert scan_source(tmp_path / "labels.jsonl").splits["train"][0][1] == (0, 1)


def test_per_image_weights_are_a_weighted_mean_of_the_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 3, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2])
    trainer = SimpleNamespace(class_weights=None, config=SimpleNamespace(label_smoothing=0.0), task="single",
                              distillation=None)
    plain = Trainer.loss(trainer, logits[:4], labels[:4])
    weighted = Trainer.loss(trainer, logits, labels, weights=torch.tensor([1.0, 1, 1, 1, 0, 0]))
    assert torch.allclose(plain, weighted)
    doubled = Trainer.loss(trainer, logits, labels, weights=torch.tensor([2.0, 1, 1, 1, 1, 1]))
    repeated = Trainer.loss(trainer, torch.cat([logits, logits[:1]]), torch.cat([labels, labels[:1]]))
    assert torch.allclose(doubled, repeated)


def test_weights_from_a_label_file_reach_the_training_split(tmp_path: Path, digits: Path) -> None:
    names = sorted(p.relative_to(digits).as_posix() for p in (digits / "train").rglob("*.png"))
    (digits / "weighted.csv").write_text("path,label,weight\n" + "".join(
        f"{n},{n.split('/')[1]},{3 if n.split('/')[1] == '0' else 1}\n" for n in names))
    from cnnctl.data.splits import prepare_data
    from cnnctl.recipe.config import TrainConfig
    from cnnctl.registry import get_model_spec

    config = TrainConfig(arch="lenet5", data_dir=str(digits / "weighted.csv"), val_split=0)
    data = prepare_data(config, get_model_spec("lenet5"))
    assert data.train.weights is not None
    assert data.train.weights.tolist() == [3.0 if label == 0 else 1.0 for label in data.train.labels.tolist()]


def test_tables_and_shards_read_nothing_outside_their_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    table = {"image": [{"bytes": None, "path": "/etc/passwd"}], "label": ["cat"]}
    pq.write_table(pa.table(table), data / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet row 0: /etc/passwd is an absolute path"):
        scan_source(data / "t.parquet")
    pq.write_table(pa.table({"image": [{"bytes": None, "path": "../secret.png"}], "label": ["cat"]}),
                   data / "u.parquet")
    with pytest.raises(DataError, match=r"u.parquet row 0: ../secret.png leads out of"):
        scan_source(data / "u.parquet")
    outside = tmp_path / "elsewhere.tar"
    with tarfile.open(outside, "w") as archive:
        add_member(archive, "k.cls", b"0")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-000.tar").symlink_to(outside)
    with pytest.raises(DataError, match=r"train-000.tar is a symlink out of"):
        scan_source(shards)
