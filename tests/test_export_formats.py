"""Every export format on a lenet5 trained on real MNIST digits: written only after it ran in its own runtime on
the test images beside PyTorch; the accuracy gate refuses a broken quantiser's model (``--force`` writes it and
says so); a missing runtime names its extra in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl import checkpoint
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.cli import app
from cnnctl.data.base import Preprocessing
from cnnctl.exporter import FORMATS
from cnnctl.exports import onnx_format
from cnnctl.models import build_model

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Path]:
    """(run folder, image folder): lenet5 trained 3 epochs on 240 real MNIST digits (0-3); 60 test images."""
    from real_mnist import write_mnist_folder

    root = tmp_path_factory.mktemp("export-formats")
    folder = write_mnist_folder(root / "digits", train_per_class=60, test_per_class=15)
    run = cnnctl.train("lenet5", data=str(folder), epochs=3, batch_size=32, out=str(root / "runs"), plots=False,
                       threads=1)
    assert run.test["test_acc"] > 0.7, run.test
    return run.run_dir, folder


def read_back(path: Path, batch: np.ndarray, entry: dict) -> np.ndarray:
    """The written file, loaded from disk by its runtime alone (no cnnctl), run on ``batch``, compiled as its JSON
    entry says (OpenVINO FP32: in float32, where the CPU plugin would choose bfloat16)."""
    if path.name.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"input": batch})[0]
    if path.name.endswith(".xml"):
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU", entry.get("compile_config", {}))
        return np.asarray(compiled({"input": batch})[compiled.output("logits")])
    return torch.jit.load(str(path))(torch.from_numpy(batch)).detach().numpy()


@pytest.mark.parametrize("format", list(FORMATS))
def test_every_format_is_judged_in_its_runtime_and_agrees(digits_run: tuple[Path, Path], format: str,
                                                          tmp_path: Path) -> None:
    run_dir, folder = digits_run
    # 60 test images: one image is 1.67 points, so the gate here allows up to 3 images changing their answer
    result = cnnctl.export(run_dir, format, dynamic_batch=True, output=f"{tmp_path}/", calibration_images=64,
                           max_drop=5)
    info = FORMATS[format]
    assert result.model_path == tmp_path / ("best" + info.suffix) and result.model_path.is_file()
    assert [path.name for path in result.files] == ["best" + suffix for suffix in info.suffixes]
    assert result.size == sum(path.stat().st_size for path in result.files)
    comparison = result.comparison
    assert result.gated and comparison.count == 60 and comparison.on == f"60 images of the test split of {folder}"
    assert comparison.drop <= 5 and comparison.top1_agreement >= 0.95 and comparison.k == 4
    if info.tolerance is not None:  # exact formats: PyTorch's logits
        assert result.max_abs_diff <= info.tolerance and comparison.top1_agreement == 1
    assert comparison.max_prob_diff < 0.5

    model, _ = cnnctl.load(run_dir)
    spec = json.loads(result.preprocessing_path.read_text())
    entry = spec["exports"][result.model_path.name]
    assert entry["format"] == format and entry["precision"] == info.precision and entry["batch"] == "any"
    assert entry["files"] == [path.name for path in result.files]
    accuracy = entry["accuracy"]
    assert accuracy["checked"] and accuracy["passed"] and accuracy["count"] == 60
    assert accuracy["pytorch_accuracy"] == comparison.reference_accuracy and "top4_agreement" in accuracy
    if info.calibrated:
        calibration = entry["quantization"]["calibration"]
        assert calibration["images"] == 64 and calibration["method"] == "minmax" and calibration["split"] == "train"
        assert calibration["from"].startswith("64 images drawn (seed 0) from 216 of the train split of")  # 24 held out

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (5, *spec["input_shape"]), generator=generator, dtype=torch.uint8)
    inputs = ((images.float() / 255 - spec["mean"][0]) / spec["std"][0]).numpy()
    with torch.inference_mode():
        expected = model(torch.from_numpy(inputs)).numpy()
    logits = read_back(result.model_path, inputs, entry)
    assert logits.shape == expected.shape
    if info.tolerance is not None:
        assert np.abs(logits - expected).max() <= info.tolerance
    else:
        assert np.abs(logits - expected).max() < 0.5 * np.abs(expected).max()


def test_the_gate_refuses_a_broken_quantiser_and_force_writes_it(digits_run: tuple[Path, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, _ = digits_run
    real = onnx_format.export_onnx_int8
    torch.manual_seed(1)
    untrained = build_model("lenet5", num_classes=4, in_channels=1).eval()
    # a quantiser that loses the weights: it quantises an untrained network instead of the checkpoint's
    monkeypatch.setattr(onnx_format, "export_onnx_int8",
                        lambda model, inputs, **options: real(untrained, inputs, **options))
    args = ["export", str(run_dir), "-f", "onnx-int8", "-o", f"{tmp_path}/", "--calibration-images", "16"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.output
    assert refused.stderr.startswith("error: the onnx-int8 export's accuracy is ")
    assert "(> --max-drop 1); nothing was written — --force writes it anyway" in refused.stderr
    assert list(tmp_path.iterdir()) == []

    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "written because of --force: the onnx-int8 export's accuracy is" in forced.stdout
    entry = json.loads((tmp_path / "best.preprocessing.json").read_text())["exports"]["best.int8.onnx"]
    assert entry["accuracy"]["passed"] is False and entry["accuracy"]["drop_points"] > 1
    assert entry["accuracy"]["forced"].startswith("the onnx-int8 export's accuracy is")
    assert (tmp_path / "best.int8.onnx").is_file()


def test_max_drop_zero_lets_through_only_what_loses_nothing(digits_run: tuple[Path, Path], tmp_path: Path) -> None:
    """--max-drop 0: an export that loses no accuracy passes (the bound is inclusive); a lossy one passes exactly
    when it lost nothing, and is refused otherwise."""
    run_dir, _ = digits_run
    exact = runner.invoke(app, ["export", str(run_dir), "-o", f"{tmp_path}/", "--max-drop", "0", "--json"])
    assert exact.exit_code == 0, exact.output
    assert json.loads(exact.stdout)["comparison"]["drop_points"] == 0
    lossy = runner.invoke(app, ["export", str(run_dir), "-f", "openvino-int8", "-o", f"{tmp_path}/", "--max-drop",
                                "0", "--json", "--force", "--calibration-images", "16"])
    assert lossy.exit_code == 0, lossy.output
    report = json.loads(lossy.stdout)
    lost = report["comparison"]["drop_points"] > 0
    assert (report["forced"] is not None) == lost
    if lost:
        assert report["forced"].endswith("(> --max-drop 0)")


@pytest.mark.parametrize(("value", "message"), [("-1", "must be in [0, 100], got -1"),
                                              ("100.5", "must be in [0, 100], got 100.5"),
                                              ("nan", "must be a finite number, got 'nan'")])
def test_max_drop_outside_0_to_100_is_one_line(value: str, message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path / "none.safetensors"), "--max-drop", value])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: --max-drop {message}"
    with pytest.raises(cnnctl.CnnctlError, match=r"max_drop must be"):  # the same check in Python
        cnnctl.export(tmp_path / "none.safetensors", max_drop=float(value))


@pytest.fixture()
def random_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoint whose dataset (mnist) is not on this machine: nothing labelled to judge on."""
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "empty"))
    torch.manual_seed(0)
    meta = CheckpointMeta(arch="lenet5", arch_args={}, classes=[str(i) for i in range(10)],
                          preprocessing=Preprocessing(1, (28, 28), 2, (0.13,), (0.31,)), dataset="mnist")
    return checkpoint.save(tmp_path / "run" / "best.safetensors", build_model("lenet5", num_classes=10,
                                                                              in_channels=1), meta)


@pytest.mark.parametrize(("format", "module", "message"), [
    ("openvino", "openvino", "OpenVINO export needs openvino, which is not installed — pip install 'cnnctl[openvino]'"),
    ("openvino-int8", "nncf", "OpenVINO int8 export needs nncf, which is not installed — "
                              "pip install 'cnnctl[openvino]'"),
    ("onnx-int8", "onnxruntime", "ONNX export needs onnxruntime, which is not installed — pip install 'cnnctl[onnx]'"),
])
def test_a_missing_runtime_names_its_extra(random_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, format: str,
                                           module: str, message: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` fail
    result = runner.invoke(app, ["export", str(random_checkpoint), "--format", format])
    assert result.exit_code == 1 and result.stderr.strip() == f"error: {message}"


def test_without_labelled_images_a_lossy_export_needs_force(random_checkpoint: Path) -> None:
    refused = runner.invoke(app, ["export", str(random_checkpoint), "-f", "onnx-fp16"])
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("error: the accuracy of the onnx-fp16 export (a lossy format) could not be "
                                     "checked: the mnist test split is not on this machine")
    assert sorted(p.name for p in random_checkpoint.parent.iterdir()) == ["best.safetensors"]
    forced = runner.invoke(app, ["export", str(random_checkpoint), "-f", "onnx-fp16", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "accuracy not checked (no labelled images); top-1 agreement" in forced.stdout
    assert "written because of --force: the accuracy of the onnx-fp16 export" in forced.stdout
    # an exact format is still compared with PyTorch, on random pixels
    exact = runner.invoke(app, ["export", str(random_checkpoint), "-f", "openvino"])
    assert exact.exit_code == 0 and "on 16 random images (seed 0; the mnist test split" in exact.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["-f", "onnx", "--calibration-method", "entropy"],
     "--calibration-method applies only to --format onnx-int8 or openvino-int8"),
    (["-f", "openvino-int8", "--calibration-method", "entropy"], "openvino-int8 calibrates by minmax, not 'entropy'"),
    (["-f", "onnx-int8", "--calibration-images", "0"], "--calibration-images must be at least 1, got 0"),
    (["-f", "onnx-int8"], "onnx-int8 calibrates on training images, and the mnist train split is not on this machine; "
                          "`cnnctl download mnist` fetches it (or pass --data FOLDER)"),
])
def test_calibration_options_fail_in_one_line(random_checkpoint: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["export", str(random_checkpoint), *args])
    assert result.exit_code in (1, 2) and result.stderr.strip() == f"error: {message}"
    assert sorted(p.name for p in random_checkpoint.parent.iterdir()) == ["best.safetensors"]


def test_benchmark_prints_a_table_with_every_runtime(random_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["benchmark", str(random_checkpoint), "--threads", "1", "--seconds", "0.01",
                                 "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("lenet5, input 1x32x32, 1 thread(s), throughput at batch 4; ")
    assert lines[2] == "| runtime | version | latency, batch 1 (ms) | throughput, batch 4 (img/s) | size | note |"
    rows = [line.split(" | ") for line in lines[4:] if line.startswith("| ")]
    others = [entry.title for name, entry in FORMATS.items() if name != "torchscript"]
    titles = ["PyTorch eager", "TorchScript", *others]
    assert [row[0].removeprefix("| ") for row in rows] == titles
    for row in rows:  # every runtime timed: a latency, a throughput and a size
        assert float(row[2]) > 0 and float(row[3].replace(",", "")) > 0 and row[4].endswith(("kB", "MB")), row
    assert lines[-1] == "int8 formats calibrated on 64 random images (seed 0)"  # the mnist images are not here

    monkeypatch.setitem(sys.modules, "openvino", None)
    missing = runner.invoke(app, ["benchmark", str(random_checkpoint), "--formats", "openvino-fp16", "--json",
                                  "--seconds", "0.01"])
    assert missing.exit_code == 0, missing.output
    pytorch, openvino = json.loads(missing.stdout)["rows"]
    assert pytorch["name"] == "pytorch" and pytorch["latency_ms"] > 0
    assert openvino["latency_ms"] is None and openvino["note"] == (
        "OpenVINO export needs openvino, which is not installed — pip install 'cnnctl[openvino]'")


@pytest.mark.parametrize(("args", "message"), [
    (["--batch-size", "1"], "--batch-size must be >= 2, got 1"),
    (["--formats", "onnx,tflite"], "unknown export format 'tflite'"),
    (["--seconds", "0"], "--seconds must be positive, got 0"),
])
def test_benchmark_bad_options_fail_in_one_line(random_checkpoint: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["benchmark", str(random_checkpoint), *args])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: {message}")


def test_a_runtime_that_cannot_run_the_export_is_one_line(random_checkpoint: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(files: dict, threads: int | None = None):
        raise RuntimeError("Could not find an implementation for HardSwish(14) node\nwith more detail")

    monkeypatch.setattr(onnx_format, "onnx_runner", refuse)
    result = runner.invoke(app, ["export", str(random_checkpoint), "-f", "onnx"])
    assert result.exit_code == 1 and result.stderr.strip() == (
        "error: onnxruntime could not run the onnx export of lenet5: Could not find an implementation for "
        "HardSwish(14) node; nothing was written — try another --format, or --debug for the traceback")
    assert sorted(p.name for p in random_checkpoint.parent.iterdir()) == ["best.safetensors"]
