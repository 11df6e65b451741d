"""Every bad input: one line on stderr, a non-zero exit code, no traceback — through the real console script."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnctl import checkpoint
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.data.base import Preprocessing
from cnnctl.models import build_model


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cnnctl", *args], capture_output=True, text=True, timeout=300,
                          env=full_env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def lenet5_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    model = build_model("lenet5", num_classes=10, in_channels=1)
    meta = CheckpointMeta(arch="lenet5", arch_args={}, classes=[str(i) for i in range(10)],
                          preprocessing=Preprocessing(1, (28, 28), 2, (0.1307,), (0.3081,)), dataset="mnist")
    checkpoint.save(path, model, meta)
    return path


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = ("import sys, time; t = time.perf_counter(); from cnnctl.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print(time.perf_counter() - t, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "predict" in result.stdout


def test_list_does_not_import_torch() -> None:
    code = ("import sys; from cnnctl.cli import main\n"
            "try:\n    main(['list', '--json'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"lenet5"' in result.stdout and '"mnist"' in result.stdout


def test_console_script_help_returns_quickly() -> None:
    started = time.perf_counter()
    result = run_cli("--help")
    assert result.returncode == 0
    # not a performance assertion: only that --help does not pay for a torch import by a wide margin
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("train", "lenet55"), ("unknown architecture", "did you mean lenet5?")),
        (("train", "lenet5", "--dataset", "mnits"), ("unknown dataset", "did you mean mnist?")),
        (("train", "lenet5", "--optimizer", "adamm"), ("unknown optimizer", "did you mean adam?")),
        (("train", "lenet5", "--epochs", "-1"), ("--epochs",)),
        (("train", "lenet5", "--lr", "0"), ("--lr must be positive",)),
        (("summary", "lenet5", "--input-size", "1x20x20"), ("lenet5 takes 32x32",)),
        (("summary", "lenet5", "--input-size", "banana"), ("--input-size",)),
        (("eval", "does-not-exist.safetensors"), ("does not exist",)),
        (("predict", "does-not-exist.safetensors", "."), ("does not exist",)),
        (("list", "gizmos"), ("unknown list",)),
        (("download",), ("name a dataset",)),
    ],
)
def test_bad_input_gives_one_line(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli(*args), *fragments)


def test_unreachable_mirror_is_one_line(tmp_path: Path) -> None:
    result = run_cli("download", "mnist", "--root", str(tmp_path), "--mirror", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not list(tmp_path.glob("mnist/*.gz"))


def test_corrupt_and_foreign_checkpoints(tmp_path: Path, lenet5_checkpoint: Path) -> None:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(lenet5_checkpoint.read_bytes()[:200])
    assert_one_line_error(run_cli("eval", str(truncated)), "not a readable safetensors")
    pickle_file = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2)}, pickle_file)
    assert_one_line_error(run_cli("predict", str(pickle_file), str(tmp_path)), "is a PyTorch pickle file",
                          "never unpickles", f"--pretrained {pickle_file}")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(foreign))
    assert_one_line_error(run_cli("eval", str(foreign)), "without cnnctl metadata")


def test_checkpoint_whose_shapes_do_not_match_its_architecture(tmp_path: Path, lenet5_checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(lenet5_checkpoint))
    tensors["fc3.weight"] = torch.zeros(5, 84)
    meta_json = checkpoint.read_meta(lenet5_checkpoint).to_json()
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"cnnctl": meta_json})
    assert_one_line_error(run_cli("summary", str(bad)), "does not match its architecture", "fc3.weight")


def test_not_an_image_in_strict_mode(tmp_path: Path, lenet5_checkpoint: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    result = run_cli("predict", str(lenet5_checkpoint), str(fake), "--strict")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 images could not be read")


def test_debug_shows_the_traceback() -> None:
    result = run_cli("--debug", "train", "lenet55")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_summary_lenet5_reports_61706_parameters() -> None:
    result = run_cli("summary", "lenet5")
    assert result.returncode == 0, result.stderr
    assert "61,706" in result.stdout


@pytest.fixture(scope="module")
def model_files(lenet5_checkpoint: Path) -> dict[str, Path]:
    """The files a user has next to a checkpoint and may pass by mistake: its ONNX and TorchScript exports (made
    by `cnnctl export`), their preprocessing JSON, a torch.save state dict, a text file and an image."""
    import cnnctl

    folder = lenet5_checkpoint.parent
    files = {"onnx": cnnctl.export(lenet5_checkpoint, "onnx").model_path,
             "torchscript": cnnctl.export(lenet5_checkpoint, "torchscript").model_path,
             "json": folder / "model.preprocessing.json", "pickle": folder / "weights.pth",
             "text": folder / "notes.txt", "image": folder / "digit.png"}
    torch.save(build_model("lenet5", num_classes=10, in_channels=1).state_dict(), files["pickle"])
    files["text"].write_text("learning rate 0.01 worked best\n")
    from PIL import Image

    Image.new("L", (28, 28)).save(files["image"])
    return files


@pytest.mark.parametrize(("kind", "fragments"), [
    ("onnx", ("is an ONNX model (what `cnnctl export` writes), not a cnnctl checkpoint",
              "pass the .safetensors checkpoint it was exported from: {checkpoint}")),
    ("torchscript", ("is a TorchScript model", "exported from: {checkpoint}")),
    ("pickle", ("is a PyTorch pickle file", "--pretrained")),
    ("json", ("is a JSON file, not a cnnctl checkpoint",)),
    ("text", ("is a text file, not a cnnctl checkpoint",)),
    ("image", ("is an image, not a checkpoint", "cnnctl predict CHECKPOINT")),
])
def test_files_of_another_kind_are_named_with_what_to_pass(model_files: dict[str, Path], lenet5_checkpoint: Path,
                                                            kind: str, fragments: tuple[str, ...]) -> None:
    expected = [fragment.format(checkpoint=lenet5_checkpoint) for fragment in fragments]
    result = run_cli("eval", str(model_files[kind]))
    assert_one_line_error(result, str(model_files[kind]), *expected)
    assert "bytes" not in result.stderr and "0x" not in result.stderr
    if kind in ("onnx", "torchscript", "pickle"):  # predict takes them as the model, not as images to classify
        assert_one_line_error(run_cli("predict", str(model_files[kind]), str(model_files["image"])), *expected)


def test_folders_that_are_not_run_folders_say_what_they_are(tmp_path: Path) -> None:
    images = tmp_path / "photos"
    (images / "train" / "cats").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "train" / "cats" / "a.png")
    assert_one_line_error(run_cli("eval", str(images)), "is a folder of images, not a run folder",
                          f"cnnctl predict CHECKPOINT {images}")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("eval", str(tmp_path / "empty")), "is not a run folder",
                          "pass a run folder written by `cnnctl train`")


def test_unreadable_images_are_described_without_python_internals(tmp_path: Path, lenet5_checkpoint: Path,
                                                                  model_files: dict[str, Path]) -> None:
    """predict, check and train all name what the file is (no '<_io.BytesIO object at 0x...>')."""
    from typer.testing import CliRunner

    from cnnctl.cli import app

    runner = CliRunner()
    data = tmp_path / "data" / "train"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for index in range(4):
            from PIL import Image

            Image.new("L", (28, 28), color=60 * index).save(data / name / f"{index}.png")
    (data / "a" / "notes.png").write_text("not a picture\n")
    (data / "b" / "model.png").write_bytes(model_files["onnx"].read_bytes())
    outputs = {
        "predict": runner.invoke(app, ["predict", str(lenet5_checkpoint), str(data)]),
        "check": runner.invoke(app, ["check", str(data.parent)]),
        "train": runner.invoke(app, ["train", "lenet5", "--data", str(data.parent), "--epochs", "1",
                                     "--out", str(tmp_path / "runs")]),
    }
    for command, result in outputs.items():
        assert result.exit_code == 0, (command, result.output)
        assert "notes.png: not a readable image (it is a text file)" in result.output, (command, result.output)
        assert "model.png: not a readable image (it is an ONNX model)" in result.output, (command, result.output)
        assert "0x" not in result.output and "BytesIO" not in result.output and "could not read could not" \
            not in result.output, (command, result.output)
    predicted = outputs["predict"].output
    assert predicted.count("could not read") == 1 and "could not read 2 images:" in predicted


def test_names_that_begin_an_architecture_list_them_and_a_missing_folder_does_not_exist(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("train", "resnet"), "did you mean resnet18, resnet34, resnet50, tv:resnet18, "
                                                      "tv:resnet34, tv:resnet50?")
    assert_one_line_error(run_cli("train", "lenet5", "--data", str(tmp_path / "nothere")),
                          f"{tmp_path / 'nothere'} does not exist")
    (tmp_path / "file.txt").write_text("x")
    assert_one_line_error(run_cli("train", "lenet5", "--data", str(tmp_path / "file.txt")), "is a file, not a folder")


@pytest.mark.parametrize(("kind", "fragment"), [
    ("onnx", "is an ONNX model (what `cnnctl export` writes), not a cnnctl checkpoint — pass the .safetensors "
             "checkpoint it was exported from: {checkpoint}"),
    ("torchscript", "is a TorchScript model"), ("text", "is a text file, not a weights file"),
    ("image", "is an image, not a weights file")])
def test_pretrained_names_files_that_hold_no_weights(model_files: dict[str, Path], lenet5_checkpoint: Path,
                                                     kind: str, fragment: str) -> None:
    from cnnctl import registry
    from cnnctl.errors import CheckpointError
    from cnnctl.models.pretrained import load_pretrained

    model = build_model("lenet5", num_classes=10, in_channels=1)
    with pytest.raises(CheckpointError) as refused:
        load_pretrained(model, registry.get_model_spec("lenet5"), model_files[kind])
    assert str(refused.value).startswith(f"--pretrained {model_files[kind]} ")
    assert fragment.format(checkpoint=lenet5_checkpoint) in str(refused.value)
