"""Hostile and broken dataset files: a pickle that would run code, archives with escaping members, truncated or
corrupt archives, labels out of range — each a clear message naming the file, and nothing half-done left behind."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from dataset_files import cifar_batch, patch_images, py2_pickle, register_tiny, tar_bytes, write_svhn
from typer.testing import CliRunner

from cnnctl import registry
from cnnctl.cli import app
from cnnctl.data.cifar import CIFAR10, read_batch
from cnnctl.data.svhn import SVHN
from cnnctl.errors import DataError

runner = CliRunner()


class RunsACommand:
    """Unpickling this with plain pickle.load would run ``touch <sentinel>``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


class CallsEval:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


def good_cifar10_members(count: int = 20) -> dict[str, bytes]:
    labels = np.arange(count) % 10
    batch = cifar_batch(patch_images(labels), {b"labels": labels})
    members = {f"cifar-10-batches-py/data_batch_{i}": batch for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = batch
    return members


@pytest.fixture()
def cifar_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Register ``bad-cifar10``: CIFAR-10's loader on an archive made of the given members (its md5 trusted)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CNNCTL_MIRROR", str(mirror))

    def make(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None, raw: bytes | None = None):
        archive = raw if raw is not None else tar_bytes(members, extra)
        (mirror / "cifar-10-python.tar.gz").write_bytes(archive)
        return register_tiny(CIFAR10, "bad-cifar10", {"cifar-10-python.tar.gz": archive})

    yield make
    registry._DATASETS.pop("bad-cifar10", None)


def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps(RunsACommand(sentinel), protocol=2))
    with pytest.raises(DataError, match=r"refusing to unpickle it: it references posix\.system") as caught:
        read_batch(evil)
    assert str(evil) in str(caught.value)
    assert not sentinel.exists()
    # the same bytes through plain pickle really would have run it: the test is not vacuous
    pickle.loads(evil.read_bytes())
    assert sentinel.exists()

    other = tmp_path / "test_batch"
    other.write_bytes(pickle.dumps({"data": CallsEval()}, protocol=4))
    with pytest.raises(DataError, match="builtins.eval"):
        read_batch(other)


def test_real_format_batches_load_and_object_arrays_are_rejected(tmp_path: Path) -> None:
    labels = np.arange(10)
    good = tmp_path / "data_batch_1"
    good.write_bytes(cifar_batch(patch_images(labels), {b"labels": labels}))
    batch = read_batch(good)
    assert batch["data"].dtype == np.uint8 and batch["data"].shape == (10, 3072) and batch["labels"] == list(range(10))

    from cnnctl.data.cifar import batch_arrays

    objects = tmp_path / "objects"
    objects.write_bytes(py2_pickle({b"data": np.array([[1, 2]], dtype=object), b"labels": [0]}))
    with pytest.raises(DataError, match="expected uint8 images"):
        batch_arrays(objects, "labels", 10)
    out_of_range = tmp_path / "out_of_range"
    out_of_range.write_bytes(cifar_batch(patch_images(labels), {b"labels": labels + 3}))
    with pytest.raises(DataError, match=r"out_of_range: label 12 out of range for 10 classes"):
        batch_arrays(out_of_range, "labels", 10)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated is corrupt or truncated"):
        read_batch(truncated)


def test_training_on_an_archive_holding_a_malicious_pickle_fails_cleanly(cifar_with, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    members = good_cifar10_members()
    members["cifar-10-batches-py/data_batch_3"] = pickle.dumps(RunsACommand(sentinel), protocol=2)
    cifar_with(members)
    result = runner.invoke(app, ["train", "lenet5", "--dataset", "bad-cifar10", "--epochs", "1",
                                 "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert "data_batch_3: refusing to unpickle it" in result.output
    assert not sentinel.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("member", ["../evil", "/tmp/cnnctl-absolute-evil", "cifar-10-batches-py/../../evil"])
def test_archive_members_that_escape_are_refused(cifar_with, tmp_path: Path, member: str) -> None:
    members = good_cifar10_members()
    members[member] = b"owned"
    cifar_with(members)
    result = runner.invoke(app, ["download", "bad-cifar10"])
    assert result.exit_code == 1
    assert "refusing to extract" in result.output and member in result.output
    data = tmp_path / "data"
    assert not (tmp_path / "evil").exists() and not (data / "evil").exists()
    assert not Path("/tmp/cnnctl-absolute-evil").exists()
    assert sorted(p.name for p in (data / "bad-cifar10").iterdir() if not p.name.startswith(".")) == \
        ["cifar-10-python.tar.gz"]  # no extracted folder, no staging folder
    assert not [p for p in (data / "bad-cifar10").iterdir() if "extract" in p.name]


def test_links_in_the_archive_are_refused(cifar_with, tmp_path: Path) -> None:
    link = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    cifar_with(good_cifar10_members(), extra=[link])
    result = runner.invoke(app, ["train", "lenet5", "--dataset", "bad-cifar10", "--epochs", "1",
                                 "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "is a link" in result.output
    assert not (tmp_path / "data" / "bad-cifar10" / "extracted").exists()


def test_truncated_archive_from_the_mirror_is_not_kept(cifar_with, tmp_path: Path) -> None:
    spec = cifar_with(good_cifar10_members())
    mirror = Path(os.environ["CNNCTL_MIRROR"])
    whole = (mirror / "cifar-10-python.tar.gz").read_bytes()
    (mirror / "cifar-10-python.tar.gz").write_bytes(whole[: len(whole) // 2])
    result = runner.invoke(app, ["download", spec.name])
    assert result.exit_code == 1 and "checksum mismatch" in result.output
    assert not list((tmp_path / "data" / spec.name).glob("cifar-10-python.tar.gz*"))


def test_corrupt_archive_with_a_matching_checksum_is_reported_and_not_half_extracted(cifar_with,
                                                                                      tmp_path: Path) -> None:
    whole = tar_bytes(good_cifar10_members())
    cut = whole[: len(whole) * 2 // 3]
    cifar_with({}, raw=cut)  # the registered md5 is the cut file's: only extraction can notice
    result = runner.invoke(app, ["download", "bad-cifar10"])
    assert result.exit_code == 1 and "cifar-10-python.tar.gz is corrupt or truncated" in result.output
    folder = tmp_path / "data" / "bad-cifar10"
    assert not (folder / "extracted").exists() and not [p for p in folder.iterdir() if "extracting" in p.name]
    again = runner.invoke(app, ["train", "lenet5", "--dataset", "bad-cifar10", "--epochs", "1",
                                "--out", str(tmp_path / "runs")])
    assert again.exit_code == 1 and "corrupt or truncated" in again.output


def test_a_marker_makes_extraction_happen_once_and_a_new_archive_is_extracted_again(cifar_with,
                                                                                     tmp_path: Path) -> None:
    cifar_with(good_cifar10_members())
    assert runner.invoke(app, ["download", "bad-cifar10"]).exit_code == 0
    folder = tmp_path / "data" / "bad-cifar10" / "extracted"
    batch = folder / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(b"edited after extraction")  # a second prepare must not touch a complete extraction
    spec = registry.get_dataset_spec("bad-cifar10")
    spec.extra["prepare"](folder.parent)
    assert batch.read_bytes() == b"edited after extraction"
    archive = folder.parent / "cifar-10-python.tar.gz"
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))  # "a new download"
    spec.extra["prepare"](folder.parent)
    assert batch.read_bytes() != b"edited after extraction"


def test_svhn_labels_out_of_range_and_wrong_shapes(tmp_path: Path) -> None:
    from scipy.io import savemat

    from cnnctl.data.svhn import load_mat

    write_svhn(tmp_path, train=10, test=10)
    data = load_mat(tmp_path / "train_32x32.mat", SVHN.classes)
    assert len(data) == 10 and set(data.labels.tolist()) <= set(range(10))
    bad = tmp_path / "bad.mat"
    savemat(bad, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)})
    with pytest.raises(DataError, match=r"bad\.mat: label 11 out of range"):
        load_mat(bad, SVHN.classes)
    savemat(bad, {"X": np.zeros((28, 28, 2), np.uint8), "y": np.array([[1], [2]], np.uint8)})
    with pytest.raises(DataError, match=r"expected X as uint8 32×32×3×N"):
        load_mat(bad, SVHN.classes)
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 50)
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        load_mat(bad, SVHN.classes)


def test_unpickler_refuses_persistent_ids(tmp_path: Path) -> None:
    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj):
            return "ref" if isinstance(obj, str) and obj == "outside" else None

    buffer = io.BytesIO()
    WithPersistentId(buffer, protocol=2).dump({"data": "outside"})
    path = tmp_path / "persistent"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="persistent ids"):
        read_batch(path)
