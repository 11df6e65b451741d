"""The ```python examples of README.md and docs/api.md run, verbatim, as tests.

The blocks of one document run in order in one namespace, in a fresh working folder that holds ``digit.png``
(the image the examples classify, as a user would have). They train on ``dataset="mnist"``: here that is the
real registered MNIST entry (its loader, classes and normalisation), with its four files swapped for the tiny
synthetic digits of conftest.py — the same file names and IDX format, served from a local mirror and verified
by checksum like any download. Only what must differ for a tiny copy differs: the checksums, the split sizes and
the held-out validation count. Training still has to learn, and the tests check that it did.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
from pathlib import Path

import pytest

from cnnctl import registry

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/api.md")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(document: str) -> list[str]:
    path = ROOT / document
    return PYTHON_BLOCK.findall(path.read_text(encoding="utf-8")) if path.is_file() else []


@pytest.fixture()
def tiny_mnist(digits_mirror: tuple[Path, dict[str, bytes]], tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Path:
    """``mnist`` backed by the tiny synthetic digits; returns a working folder with ``digit.png`` in it."""
    from torchvision.io import write_png

    from cnnctl.data.idx import parse_idx

    mirror, contents = digits_mirror
    real = registry.get_dataset_spec("mnist")
    files = tuple(dataclasses.replace(remote, content_sha256=hashlib.sha256(contents[remote.name]).hexdigest(),
                                      content_md5=None, file_md5=None, size=None) for remote in real.files)
    tiny = dataclasses.replace(real, files=files, train_size=1200, test_size=300, default_val_split=200,
                               mirrors=("http://127.0.0.1:9/unreachable/",))
    monkeypatch.setitem(registry._DATASETS, "mnist", tiny)
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CNNCTL_MIRROR", str(mirror))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    import torch

    first_test_image = parse_idx(contents["t10k-images-idx3-ubyte.gz"])[0]
    write_png(torch.from_numpy(first_test_image.copy()).unsqueeze(0), "digit.png")
    assert gzip.decompress((mirror / "t10k-images-idx3-ubyte.gz").read_bytes()) == contents["t10k-images-idx3-ubyte.gz"]
    return work


def test_the_api_document_has_examples() -> None:
    assert len(python_blocks("docs/api.md")) >= 2  # the API tour and the use of an export without cnnctl


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
@pytest.mark.parametrize("document", [name for name in DOCUMENTS if python_blocks(name)])
def test_python_examples_run(document: str, tiny_mnist: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    for number, code in enumerate(python_blocks(document), start=1):
        exec(compile(code, f"{document} (python block {number})", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out

    if "run" in namespace:  # the examples really trained, loaded, predicted and exported
        run = namespace["run"]
        assert run.test["test_acc"] >= 0.9, run.test  # type: ignore[attr-defined]
        assert f"{run.run_dir}" in printed  # type: ignore[attr-defined]
    if "labels" in namespace and "logits" in namespace:  # cnnctl.predict and the bare onnxruntime path agree
        assert int(namespace["labels"][0]) == int(namespace["logits"].argmax())  # type: ignore[index,union-attr]
    if "exported" in namespace:
        assert namespace["exported"].max_abs_diff <= 1e-4  # type: ignore[attr-defined]
