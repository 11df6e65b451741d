"""The Python API: results as documented, and every bad input raised as a CnnctlError (never a Typer exit)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnctl
from cnnctl import checkpoint
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.data.base import Preprocessing
from cnnctl.errors import UsageError
from cnnctl.models import build_model


@pytest.fixture(scope="module")
def simplecnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    meta = CheckpointMeta(arch="simplecnn", arch_args={}, classes=[f"c{i}" for i in range(10)],
                          preprocessing=Preprocessing(1, (28, 28), 0, (0.13,), (0.31,)), dataset="mnist")
    path = tmp_path_factory.mktemp("api") / "best.safetensors"
    return checkpoint.save(path, build_model("simplecnn", num_classes=10, in_channels=1), meta)


def test_import_cnnctl_does_not_import_torch() -> None:
    code = "import sys, cnnctl; cnnctl.train; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_train_returns_the_run_folder(tiny_digits, tmp_path: Path) -> None:
    run = cnnctl.train("simplecnn", dataset="tinydigits", epochs=1, batch_size=64, out=str(tmp_path))
    assert run.run_dir == tmp_path / "simplecnn-tinydigits" / "1"
    assert Path(run) == run.run_dir and os.fspath(run) == str(run.run_dir)
    assert run.best_path == run.run_dir / "best.safetensors" and run.best_path.is_file()
    assert [row["epoch"] for row in run.history] == [1] and 0 <= run.test["test_acc"] <= 1
    model, preprocessing = cnnctl.load(run)  # the run itself stands for its folder, i.e. best.safetensors
    assert not model.training and preprocessing == checkpoint.read_meta(run.best_path).preprocessing


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
def test_load_and_predict_agree_with_the_model(simplecnn_checkpoint: Path, tmp_path: Path) -> None:
    from torchvision.io import write_png

    model, preprocessing = cnnctl.load(simplecnn_checkpoint)
    assert not model.training and preprocessing.image_size == (28, 28)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels, probabilities = cnnctl.predict(model, images)
    with torch.inference_mode():
        expected = torch.softmax(model((images.float() / 255 - 0.13) / 0.31), dim=1)
    torch.testing.assert_close(probabilities, expected, atol=1e-6, rtol=0)
    assert labels.tolist() == expected.argmax(1).tolist()
    # the same images as PNG files, through a path, a folder and a single C×H×W tensor
    for index, image in enumerate(images):
        write_png(image, str(tmp_path / f"{index}.png"))
    by_files, _ = cnnctl.predict(str(simplecnn_checkpoint), [tmp_path / f"{i}.png" for i in range(3)])
    by_folder, _ = cnnctl.predict(simplecnn_checkpoint, tmp_path)
    single, _ = cnnctl.predict(model, images[1])
    assert by_files.tolist() == by_folder.tolist() == labels.tolist() and single.tolist() == labels[1:2].tolist()


@pytest.mark.parametrize(("call", "message"), [
    (lambda: cnnctl.train(dataset="mnist"), "cnnctl.train needs an architecture"),
    (lambda: cnnctl.train("lenet5", epoch=2), "unknown option in cnnctl.train(): 'epoch': did you mean epochs?"),
    (lambda: cnnctl.train("lenet5", epochs=0), "epochs must be at least 1, got 0"),
    (lambda: cnnctl.train("simplecnm"), "unknown architecture 'simplecnm': did you mean simplecnn?"),
    (lambda: cnnctl.load("no/such.safetensors"), "checkpoint no/such.safetensors does not exist"),
    (lambda: cnnctl.load(42), "cnnctl.load expected a path, got int"),
    (lambda: cnnctl.predict(torch.nn.Linear(2, 2), []), "cnnctl.predict needs a model from cnnctl.load()"),
    (lambda: cnnctl.export("no/such.safetensors"), "checkpoint no/such.safetensors does not exist"),
])
def test_bad_calls_raise_cnnctl_errors(call, message: str) -> None:
    with pytest.raises(cnnctl.CnnctlError) as raised:
        call()
    assert str(raised.value).startswith(message), str(raised.value)


@pytest.mark.parametrize(("images", "message"), [
    (torch.zeros(2, 1, 28, 28), "cnnctl.predict expects uint8 pixel values (0-255), got a torch.float32 tensor"),
    (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "cnnctl.predict expects images of shape N x 1x28x28"),
    (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "cnnctl.predict expects images of shape N x 1x28x28"),
    (12, "cnnctl.predict cannot read images from a int"),
    ([], "no images to predict"),
    (["missing.png"], "missing.png does not exist"),
])
def test_bad_images_raise_cnnctl_errors(simplecnn_checkpoint: Path, images, message: str) -> None:
    model, _ = cnnctl.load(simplecnn_checkpoint)
    with pytest.raises(cnnctl.CnnctlError, match=f"^{message[:40]}".replace("(", r"\(").replace(")", r"\)")):
        cnnctl.predict(model, images)


def test_a_train_config_can_be_passed_and_overridden(tiny_digits, tmp_path: Path) -> None:
    from cnnctl.recipe.config import TrainConfig

    config = TrainConfig(arch="simplecnn", dataset="tinydigits", epochs=5, out=str(tmp_path))
    with pytest.raises(UsageError, match="^batch_size must be at least 1"):
        cnnctl.train(config, batch_size=0)  # options override the config's fields
    assert config.batch_size is None  # and the config passed in is not changed (its batch size is derived later)


def test_evaluate_takes_every_option_of_cnnctl_eval_with_its_default() -> None:
    """The API and the command cannot drift: each option of `cnnctl eval` is a keyword of cnnctl.evaluate with
    the same default (``--report`` is ``report``; ``--json`` is the command's own output format)."""
    import inspect

    from cnnctl.cli.eval_command import eval_command

    command = inspect.signature(eval_command).parameters
    api = inspect.signature(cnnctl.evaluate).parameters
    renamed = {"report_dir": "report", "checkpoint_path": "checkpoint_path"}
    for name, parameter in command.items():
        if name == "json_output":
            continue
        assert renamed.get(name, name) in api, f"cnnctl.evaluate lacks {name}"
        if name != "checkpoint_path":
            assert api[renamed.get(name, name)].default == parameter.default, name


@pytest.mark.parametrize("name", ["train", "eval", "predict", "export", "tune", "lr-find", "calibrate", "serve"])
def test_each_command_and_its_python_function_take_the_same_options(name: str) -> None:
    """One declaration per command (cnnctl/recipe/options.py, cnnctl/recipe/commands.py) gives both its command-line
    options and its function's keywords: the same names with the same defaults."""
    import typer.main

    import cnnctl.tune
    from cnnctl.cli import app
    from cnnctl.engine.lr_find import lr_find
    from cnnctl.recipe.commands import COMMANDS, api_options
    from cnnctl.recipe.options import CONFIG_OPTIONS
    from cnnctl.serve import ServeSettings

    functions = {"train": cnnctl.train, "eval": cnnctl.evaluate, "predict": cnnctl.predict,
                 "export": cnnctl.export, "tune": cnnctl.tune.search, "lr-find": lr_find, "serve": ServeSettings,
                 "calibrate": cnnctl.calibrate}
    declared = CONFIG_OPTIONS if name == "train" else api_options(COMMANDS[name])
    cli = {param.name: param for param in typer.main.get_command(app).commands[name].params}
    api = inspect.signature(functions[name]).parameters
    assert declared
    for option in declared:
        if option.cli:
            assert option.name in cli, f"cnnctl {name} lacks {option.name}"
            assert cli[option.name].default == option.stored_default, option.name
        assert option.name in api, f"the function of cnnctl {name} lacks {option.name}"
        assert api[option.name].default == option.stored_default, option.name
    if name != "train":  # and the function takes no option the command lacks, nor with another default
        cli_only = {option.name for option in COMMANDS[name] if not option.config}
        own = {p.name: p.default for p in api.values() if p.default is not inspect.Parameter.empty}
        shared = {key: default for key, default in own.items() if key in cli and key not in cli_only}
        assert shared == {option.name: option.stored_default for option in declared}


def test_a_wrong_option_value_is_the_same_error_in_python_as_on_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="batch_size must be at least 1"):
        cnnctl.evaluate(tmp_path, batch_size=0)
    with pytest.raises(UsageError, match="did you mean flip"):
        cnnctl.predict(tmp_path, [], tta="flp")
    with pytest.raises(UsageError, match="did you mean batch_size"):
        cnnctl.evaluate(tmp_path, batch_sise=5)
