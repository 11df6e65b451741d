"""Options declared once (cnnctl/recipe/options.py): the command line, config files, the API and resume agree on names,
types, defaults and ranges; config files are untrusted input; closed lists are registries."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.engine.optim import build_optimizer
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.recipe import optimizers as optim
from cnnctl.recipe.config import TrainConfig
from cnnctl.recipe.config_file import build_train_config, read_config_file
from cnnctl.recipe.options import OPTIONS

runner = CliRunner()
FAST = ["--dataset", "microdigits", "--batch-size", "16", "--threads", "1", "--no-plots"]


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ one declaration, everywhere
def test_the_command_line_and_trainconfig_are_generated_from_the_declarations() -> None:
    import typer.main

    command = typer.main.get_command(app).commands["train"]
    cli = {param.name: param for param in command.params}
    declared = {option.name: option for option in OPTIONS}
    assert set(cli) == {name for name, option in declared.items() if option.cli}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    stored = {option.attribute for option in OPTIONS if option.config and "." not in option.attribute}
    assert set(fields) == stored
    for option in OPTIONS:
        if option.config and option.attribute in fields and option.type not in (list, dict) and option.name != "arch":
            assert fields[option.attribute].default == option.stored_default, option.name
    assert cli["optimizer"].metavar == "[" + "|".join(optim.OPTIMIZERS) + "]"
    import inspect

    api = inspect.signature(cnnctl.train).parameters
    assert {name for name, option in declared.items() if option.config} - {"arch"} <= set(api)
    assert api["epochs"].default == 10 and api["dropout"].default is None


def test_flag_names_are_accepted_in_config_files_and_old_names_still_are(tmp_path: Path) -> None:
    images = tmp_path / "images"
    new = write(tmp_path / "new.yaml", f"arch: smallvgg\ndropout: 0.3\ndata: {images}\nbatch-size: 8\n")
    config = build_train_config({}, new)
    assert config.arch_args == {"dropout": 0.3} and config.data_dir == str(images) and config.batch_size == 8
    saved = config.to_dict()
    assert saved["dropout"] == 0.3 and saved["data"] == str(images) and "data_dir" not in saved
    old = write(tmp_path / "old.json", json.dumps({"arch": "smallvgg", "arch_args": {"dropout": 0.3},
                                                   "data_dir": str(images), "batch_size": 8}))
    assert build_train_config({}, old).to_dict() == saved
    # the command line's --dropout wins over the file's
    assert build_train_config({"dropout": 0.1}, new).arch_args == {"dropout": 0.1}


@pytest.mark.parametrize("key, meant", [("learning_rate", "lr"), ("lr_rate", "lr"), ("batch", "batch_size"),
                                        ("num_epochs", "epochs"), ("batch_sise", "batch_size"), ("wd", "weight_decay")])
def test_unknown_keys_get_a_did_you_mean_that_knows_synonyms(tmp_path: Path, key: str, meant: str) -> None:
    path = write(tmp_path / "c.yaml", f"arch: lenet5\n{key}: 1\n")
    with pytest.raises(UsageError, match=f"'{key}': did you mean {meant}\\?"):
        build_train_config({}, path)
    with pytest.raises(UsageError, match=f"did you mean {meant}\\?"):
        cnnctl.train("lenet5", **{key: 1})


def test_api_errors_name_parameters_and_cli_errors_name_flags(micro_digits, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        cnnctl.train("simplecnn", dataset="microdigits", epochs=0)
    assert str(raised.value) == "epochs must be at least 1, got 0"
    with pytest.raises(UsageError, match="^val_split must be a finite number"):
        cnnctl.train("simplecnn", dataset="microdigits", val_split=float("nan"))
    one_line_error(runner.invoke(app, ["train", "simplecnn", *FAST, "--epochs", "0"]), "--epochs must be at least 1")


def test_the_api_takes_the_flags_names_and_saves_them(micro_digits, tmp_path: Path) -> None:
    result = cnnctl.train("smallvgg", dataset="microdigits", dropout=0.3, epochs=1, batch_size=16, threads=1,
                          plots=False, out=str(tmp_path), scheduler="step")
    model, _ = cnnctl.load(result)
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.3]
    saved = (result.run_dir / "config.yaml").read_text()
    # every derived default is written out: what ran, not "the dataset's" or "the optimizer's"
    for line in ("dropout: 0.3", "augment: none", "val_split: 16", "lr: 0.001", "momentum: 0.9",
                 "weight_decay: 0.0", "step_size: 1"):
        assert f"\n{line}\n" in saved, (line, saved)
    assert "data_dir" not in saved and "null" not in saved.split("channels_last")[1].split("\n")[0]


# ------------------------------------------------------------------------------------------- ranges, refused
@pytest.mark.parametrize("args, fragment", [
    (("--val-split", "nan"), "--val-split must be a finite number"),
    (("--val-split", "inf"), "--val-split must be a finite number"),
    (("--val-split", "2.5"), "--val-split must be a fraction below 1 (e.g. 0.1) or a whole number of images"),
    (("--val-split", "-1"), "--val-split must be >= 0"),
    (("--seed", "1e30"), "--seed must be in [0, "),
    (("--threads", "-2"), "--threads must be at least 1, got -2"),
    (("--threads", "100000"), "(the CPU cores of this machine)"),
    (("--grad-clip", "nan"), "--grad-clip must be a finite number"),
    (("--lr", "inf"), "--lr must be a finite number"),
    (("--weight-decay", "-0.1"), "--weight-decay must be >= 0"),
    (("--name", "../escape"), "--name must be a plain folder name"),
    (("--name", "/abs"), "--name must be a plain folder name"),
    (("--epochs", "ten"), "--epochs must be a whole number, got 'ten'"),
])
def test_out_of_range_values_are_one_line_before_any_work(micro_digits, tmp_path: Path, args, fragment) -> None:
    one_line_error(runner.invoke(app, ["train", "simplecnn", *FAST, "--out", str(tmp_path / "runs"), *args]),
                   fragment)
    assert not (tmp_path / "runs").exists()


def test_the_same_ranges_hold_in_config_files(tmp_path: Path) -> None:
    for text, fragment in [("val_split: .nan", "--val-split must be a finite number"),
                           ("seed: 1e30", "--seed must be in"),
                           ("threads: -2", "--threads must be at least 1"),
                           ("arch_args: {batch_norm: 'yes'}", "batch_norm must be bool")]:
        with pytest.raises(UsageError, match=fragment):
            build_train_config({}, write(tmp_path / "c.yaml", f"arch: lenet5\n{text}\n"))


def test_a_fixed_input_network_refuses_an_image_size_it_would_ignore(micro_digits, tmp_path: Path) -> None:
    one_line_error(runner.invoke(app, ["train", "lenet5", *FAST, "--img-size", "3"]),
                   "lenet5 takes only 32x32 inputs, so --img-size 3 cannot be used")
    one_line_error(runner.invoke(app, ["train", "smallvgg", *FAST, "--img-size", "3"]),
                   "smallvgg needs inputs of at least 4x4")
    assert build_train_config({"arch": "lenet5", "img_size": 28}).img_size == 28  # padded 28 → 32, as MNIST is


def test_an_image_size_no_checkpoint_may_hold_is_refused_before_training(micro_digits, tmp_path: Path) -> None:
    """The largest side is stated once (options.MAX_IMAGE_SIDE), and the checkpoint reader refuses one pixel more:
    a run cannot train at a size it then could not read back."""
    from cnnctl.checkpoint.schema import parse_document
    from cnnctl.recipe.options import MAX_IMAGE_SIDE

    too_big = str(MAX_IMAGE_SIDE + 1)
    one_line_error(runner.invoke(app, ["train", "simplecnn", *FAST, "--out", str(tmp_path), "--img-size", too_big]),
                   "--img-size", too_big)
    assert not (tmp_path / "simplecnn-microdigits").exists()
    document = {"format": 1, "arch": "simplecnn", "arch_args": {}, "classes": ["a", "b"],
                "preprocessing": {"channels": 1, "image_size": [MAX_IMAGE_SIDE, MAX_IMAGE_SIDE], "pad": 0,
                                  "mean": [0.5], "std": [0.5]}}
    assert parse_document(json.dumps(document), "ok")["arch"] == "simplecnn"
    document["preprocessing"]["image_size"] = [MAX_IMAGE_SIDE + 1, MAX_IMAGE_SIDE + 1]
    with pytest.raises(CnnctlError, match="preprocessing.image_size"):
        parse_document(json.dumps(document), "too big")


def test_a_count_val_split_is_stored_as_a_whole_number() -> None:
    assert build_train_config({"arch": "lenet5", "val_split": 2.0}).val_split == 2
    assert build_train_config({"arch": "lenet5", "val_split": "0.25"}).val_split == 0.25


# ------------------------------------------------------------------------------------------- hostile files
def test_an_alias_bomb_and_deep_nesting_are_refused_at_once(tmp_path: Path) -> None:
    bomb = write(tmp_path / "bomb.yaml", "".join(
        [f"{name}: &{name} [{', '.join(['*' + prev] * 10 if prev else ['x'] * 10)}]\n"
         for prev, name in zip(["", "a", "b", "c", "d", "e"], ["a", "b", "c", "d", "e", "f"])]))
    deep_yaml = write(tmp_path / "deep.yaml", "arch: " + "[" * 10000 + "]" * 10000 + "\n")
    deep_json = write(tmp_path / "deep.json", '{"arch": ' + "[" * 10000 + "]" * 10000 + "}")
    big = write(tmp_path / "big.yaml", "arch: lenet5\n" + "#" * 2_000_000 + "\n")
    for path, fragment in [(bomb, "YAML aliases"), (deep_yaml, "nested too deeply"), (deep_json, "nested too deeply"),
                           (big, "too large")]:
        start = time.perf_counter()
        with pytest.raises(UsageError, match=fragment):
            read_config_file(path)
        assert time.perf_counter() - start < 5, path  # unprotected, the bomb runs for minutes
    one_line_error(runner.invoke(app, ["train", "--config", str(bomb)]), "YAML aliases")


# ------------------------------------------------------------------------------------------- old run folders
def test_a_run_folder_written_with_the_older_option_names_resumes(micro_digits, tmp_path: Path) -> None:
    """The state and config.yaml as the previous release wrote them: ``data_dir``, dropout inside ``arch_args``,
    the dataset-dependent defaults (augmentation, validation split) not resolved."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from cnnctl.recipe.resume import STATE_FILE, STATE_KEY, read_state_document

    first = cnnctl.train("smallvgg", dataset="microdigits", dropout=0.2, epochs=1, batch_size=16, threads=1,
                         plots=False, out=str(tmp_path))
    path = first.run_dir / STATE_FILE
    with safe_open(str(path), framework="pt") as handle:
        document = json.loads(handle.metadata()[STATE_KEY])
    config = document["state"]["config"]
    config["data_dir"] = config.pop("data")
    config["arch_args"] = {"dropout": config.pop("dropout")}
    config["augment"] = config["val_split"] = None
    save_file(load_file(str(path)), str(path), metadata={STATE_KEY: json.dumps(document)})
    (first.run_dir / "config.json").write_text(json.dumps(config))

    resumed = cnnctl.train(resume=first.run_dir, epochs=2)
    assert len(resumed.history) == 2
    again = read_state_document(first.run_dir)["state"]["config"]  # saved after the resumed epoch
    assert again["augment"] == "none" and again["val_split"] == 16 and again["dropout"] == 0.2
    assert build_train_config({"epochs": 1}, first.run_dir / "config.json").arch_args == {"dropout": 0.2}


# ------------------------------------------------------------------------------------------- registries
@pytest.fixture()
def twisted_sgd(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A throwaway optimizer, registered with one entry, as docs/development.md shows."""
    calls: list[float] = []

    def build(parameters, *, lr, momentum, weight_decay, nesterov):
        calls.append(lr)
        return torch.optim.SGD(parameters, lr=lr / 2, momentum=momentum)  # the twist: half the rate

    monkeypatch.setitem(optim.OPTIMIZERS, "twisted-sgd",
                        optim.OptimizerInfo("twisted-sgd", "SGD at half the rate", build, lr=0.2))
    return calls


def test_a_registered_optimizer_trains_through_the_cli_option(micro_digits, twisted_sgd, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "simplecnn", *FAST, "--epochs", "1", "--optimizer", "twisted-sgd",
                                 "--scheduler", "none", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert twisted_sgd == [0.2]  # the entry's default rate reached its builder
    run_dir = tmp_path / "simplecnn-microdigits" / "1"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["optimizer"] == "twisted-sgd" and saved["lr"] == 0.2
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert float(rows[1].split(",")[rows[0].split(",").index("lr")]) == pytest.approx(0.1)  # the twist ran
    one_line_error(runner.invoke(app, ["train", "simplecnn", *FAST, "--optimizer", "twisted-sgf"]),
                   "did you mean twisted-sgd?")


def test_closed_lists_read_their_registries() -> None:
    import typer.main

    from cnnctl.exporter import FORMATS, get_format
    from cnnctl.recipe.augmentations import AUGMENT_PRESETS
    from cnnctl.recipe.schedules import SCHEDULERS

    params = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    for name, registry in (("optimizer", optim.OPTIMIZERS), ("scheduler", SCHEDULERS), ("augment", AUGMENT_PRESETS)):
        several = "[,...]" if name == "augment" else ""  # presets combine: crop-flip,trivialaugment
        assert params[name].metavar == "[" + "|".join(registry) + "]" + several
        assert [item.value for item in params[name].shell_complete(None, "")] == list(registry)
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    text = result.output
    for panel in ("Data", "Model", "Output", "Optimizer and schedule", "Regularisation and precision"):
        assert f"\n{panel}:\n" in text
    assert "<bool>" not in text  # flags take no value
    assert "--plots" in text and "--no-plots" in text
    assert get_format("ONNX") is FORMATS["onnx"]
    with pytest.raises(CnnctlError, match="did you mean torchscript"):
        get_format("torchscrpt")


def test_the_readme_optimizer_example_is_one_entry_that_works(monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    development = (Path(__file__).resolve().parent.parent / "docs" / "development.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"^```py\n(.*?)^```$", development, re.DOTALL | re.MULTILINE)
    monkeypatch.setattr(optim, "OPTIMIZERS", dict(optim.OPTIMIZERS))  # the registration ends with the test
    exec(compile(block, "docs/development.md", "exec"), {})  # noqa: S102
    config = build_train_config({"arch": "simplecnn", "optimizer": "sgd-nesterov", "scheduler": "cosine"})
    assert config.resolved_lr() == 0.05
    built = build_optimizer(config, torch.nn.Linear(2, 2).parameters())
    assert isinstance(built, torch.optim.SGD) and built.defaults["nesterov"] is True
