"""``cnnctl export``: ONNX and TorchScript exports give PyTorch's outputs, and the preprocessing JSON alone (with
numpy, no cnnctl) turns raw pixels into the input that reproduces ``cnnctl.predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl import checkpoint
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.cli import app
from cnnctl.data.base import Preprocessing
from cnnctl.models import build_model

runner = CliRunner()
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def export_cli(*args: str):
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 0, result.output
    return result


def numpy_input(raw: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 N×C×H×W at the stored image size → the model input, following the JSON with numpy only."""
    assert list(raw.shape[1:]) == [spec["channels"], *spec["image_size"]]
    pad = spec["pad"]
    pixels = np.pad(raw.astype(np.float32) / 255, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    mean = np.array(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    batch = ((pixels - mean) / std).astype(np.float32)
    assert list(batch.shape[1:]) == spec["input_shape"]
    return batch


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture()
def checkpoint_and_images(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, np.ndarray, str]:
    """(checkpoint, raw uint8 test images at its image size, what verification should say it used).

    lenet5 is trained (1 epoch on the tiny digits, so its logits are large and real); resnet18 (11 M parameters,
    too slow to train here) gets seeded random weights and a 3×32×32 CIFAR-style preprocessing, with no dataset
    on this machine, so the export is verified on random pixels."""
    arch = request.param
    if arch == "lenet5":
        request.getfixturevalue("tiny_digits")
        run = cnnctl.train("lenet5", dataset="tinydigits", epochs=1, batch_size=64, out=str(tmp_path / "runs"))
        assert run.test["test_acc"] > 0.5, run.test
        from cnnctl.data.splits import load_split
        from cnnctl.registry import get_dataset_spec

        test = load_split(get_dataset_spec("tinydigits"), "test")
        return run.best_path, test.images[:24].numpy(), "300 images of the tinydigits test split"
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3)
    meta = CheckpointMeta(arch=arch, arch_args={}, classes=[f"class{i}" for i in range(10)],
                          preprocessing=Preprocessing(3, (32, 32), 0, CIFAR_MEAN, CIFAR_STD), dataset=None)
    path = checkpoint.save(tmp_path / "model.safetensors", model, meta)
    raw = np.random.default_rng(1).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    return path, raw, "16 random images (seed 0; the checkpoint names no dataset)"


@pytest.mark.parametrize("checkpoint_and_images", ["lenet5", "resnet18"], indirect=True)
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_onnx_and_torchscript_exports_match_pytorch(checkpoint_and_images: tuple[Path, np.ndarray, str]) -> None:
    path, raw, verified_on = checkpoint_and_images
    stem = path.name.removesuffix(".safetensors")
    model, _ = cnnctl.load(path)
    meta = model.cnnctl_meta
    _, expected_probabilities = cnnctl.predict(model, torch.from_numpy(raw))

    static = export_cli(str(path), "--format", "onnx")
    onnx_path, json_path = path.with_name(stem + ".onnx"), path.with_name(stem + ".preprocessing.json")
    assert f"wrote {onnx_path} (ONNX opset" in static.stdout and "batch size 1" in static.stdout
    assert f"verified on {verified_on} in onnxruntime {onnxruntime.__version__}: max abs difference from PyTorch" \
        in static.stdout
    spec = json.loads(json_path.read_text())
    assert spec["classes"] == meta.classes and spec["arch"] == meta.arch
    assert spec["exports"][onnx_path.name]["batch"] == 1
    assert spec["exports"][onnx_path.name]["verification"]["max_abs_diff"] <= 1e-4
    batch = numpy_input(raw, spec)

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    one_by_one = np.concatenate([session.run([spec["output_name"]], {spec["input_name"]: image[None]})[0]
                                 for image in batch])
    np.testing.assert_allclose(softmax(one_by_one), expected_probabilities.numpy(), atol=1e-4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # a static export takes exactly one image
        session.run(None, {spec["input_name"]: batch[:2]})
    with torch.inference_mode():
        reference = model(torch.from_numpy(batch)).numpy()
    assert np.abs(one_by_one - reference).max() <= 1e-4

    dynamic = cnnctl.export(path, "onnx", dynamic_batch=True, output=path.parent / "dynamic.onnx")
    assert dynamic.max_abs_diff <= 1e-4 and dynamic.verified_on == verified_on
    assert dynamic.preprocessing_path == path.parent / "dynamic.preprocessing.json"
    session = onnxruntime.InferenceSession(str(dynamic.model_path), providers=["CPUExecutionProvider"])
    for size in (1, 5, len(batch)):  # any batch size, including ones it was not exported or verified with
        (logits,) = session.run(None, {"input": batch[:size]})
        assert np.abs(logits - reference[:size]).max() <= 1e-4

    scripted = export_cli(str(path), "--format", "torchscript", "--dynamic-batch", "--json")
    report = json.loads(scripted.stdout)
    torchscript_path = path.with_name(stem + ".torchscript.pt")
    assert report["model_path"] == str(torchscript_path) and report["max_abs_diff"] <= 1e-4
    loaded = torch.jit.load(str(torchscript_path))
    with torch.inference_mode():
        traced_logits = loaded(torch.from_numpy(batch)).numpy()
    assert np.abs(traced_logits - reference).max() <= 1e-4
    # one preprocessing file describes both exports of the checkpoint
    both = json.loads(json_path.read_text())["exports"]
    assert set(both) == {onnx_path.name, torchscript_path.name}
    assert both[torchscript_path.name]["batch"] == "any" and "opset" not in both[torchscript_path.name]


@pytest.fixture()
def small_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An untrained simplecnn named as an MNIST checkpoint, with no MNIST in the data folder (other tests of the
    session may have fetched it into the default one): exports are compared on 16 random images."""
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "empty"))
    torch.manual_seed(0)
    meta = CheckpointMeta(arch="simplecnn", arch_args={}, classes=[str(i) for i in range(10)],
                          preprocessing=Preprocessing(1, (28, 28), 0, (0.13,), (0.31,)), dataset="mnist")
    return checkpoint.save(tmp_path / "run" / "best.safetensors", build_model("simplecnn", num_classes=10,
                                                                              in_channels=1), meta)


def test_export_of_a_run_folder_to_a_folder_with_an_opset(small_checkpoint: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "empty"))  # mnist is not here: random inputs, said so
    result = export_cli(str(small_checkpoint.parent), "--opset", "18", "--output", f"{tmp_path / 'out'}/")
    assert "ONNX opset 18" in result.stdout
    assert "16 random images (seed 0; the mnist test split is not on this machine" in result.stdout
    import onnx

    proto = onnx.load(str(tmp_path / "out" / "best.onnx"))
    assert [entry.version for entry in proto.opset_import if entry.domain == ""] == [18]
    assert json.loads((tmp_path / "out" / "best.preprocessing.json").read_text())["exports"]["best.onnx"]["opset"] == 18


def test_a_mismatch_fails_in_one_line_and_writes_nothing(small_checkpoint: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnctl.exports import onnx_format

    real_runner = onnx_format.onnx_runner

    def shifted(files: dict, threads: int | None = None):
        run = real_runner(files, threads)
        return lambda batch: run(batch) + 1e-3

    monkeypatch.setattr(onnx_format, "onnx_runner", shifted)
    result = runner.invoke(app, ["export", str(small_checkpoint)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the onnx export differs from PyTorch by up to 0.001")
    assert "nothing was written" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in small_checkpoint.parent.iterdir()) == ["best.safetensors"]


def test_missing_onnxruntime_says_how_to_install_it(small_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    result = runner.invoke(app, ["export", str(small_checkpoint), "--format", "onnx"])
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: ONNX export needs onnxruntime, which is not installed — "
                                     "pip install 'cnnctl[onnx]'")
    # TorchScript needs only torch
    assert runner.invoke(app, ["export", str(small_checkpoint), "--format", "torchscript"]).exit_code == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "onxx"], "unknown export format 'onxx': did you mean onnx?"),
    (["--format", "torchscript", "--opset", "17"], "--opset applies only to --format onnx, onnx-fp16 or onnx-int8"),
])
def test_bad_options_fail_in_one_line(small_checkpoint: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["export", str(small_checkpoint), *args])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {message}"


def test_refuses_to_overwrite_the_checkpoint(small_checkpoint: Path) -> None:
    before = small_checkpoint.read_bytes()
    result = runner.invoke(app, ["export", str(small_checkpoint), "--output", str(small_checkpoint)])
    assert result.exit_code == 2 and "is the checkpoint itself" in result.stderr
    assert small_checkpoint.read_bytes() == before


def test_an_opset_the_exporter_cannot_reach_fails_and_writes_nothing(small_checkpoint: Path) -> None:
    result = runner.invoke(app, ["export", str(small_checkpoint), "--opset", "9"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: could not export simplecnn to ONNX opset 9: the exporter could only "
                                    "write opset 18; nothing was written")
    assert sorted(p.name for p in small_checkpoint.parent.iterdir()) == ["best.safetensors"]
