"""cnnctl train's options end to end on tiny data: config files, early stopping, regularisation, precision,
plots, and every contradiction or failure reported as one line (keeping what was saved)."""

from __future__ import annotations

import csv
import errno
import json
import math
import multiprocessing
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl import checkpoint, registry
from cnnctl.cli import app
from cnnctl.engine.run_folder import create_run_dir, run_lock
from cnnctl.engine.state import read_state
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.recipe.config import TrainConfig

runner = CliRunner()
FAST = ["--dataset", "microdigits", "--batch-size", "16", "--threads", "1"]
TIMING = {"epoch_time_s", "images_per_s"}


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, *fragments: str, code: int = 2, first: bool = True) -> str:
    """The command failed with one ``error:`` line on stderr; ``first``: and nothing else before it (it failed
    before any work started)."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any(line.startswith("error") for line in lines[:-1])
    assert len(lines) == 1 or not first, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


# ------------------------------------------------------------------------------------------------ config files
def test_config_yaml_of_a_run_reproduces_it_exactly(micro_digits, tmp_path: Path) -> None:
    first = invoke("train", "simplecnn", *FAST, "--epochs", "3", "--optimizer", "sgd", "--nesterov",
                   "--scheduler", "cosine", "--warmup-epochs", "1", "--label-smoothing", "0.1", "--grad-clip", "5",
                   "--augment", "shift", "--seed", "7", "--no-plots", "--out", str(tmp_path / "a"))
    assert first.exit_code == 0, first.output
    run_a = tmp_path / "a" / "simplecnn-microdigits" / "1"
    saved = (run_a / "config.yaml").read_text()
    assert "optimizer: sgd" in saved and "lr: 0.05" in saved and "label_smoothing: 0.1" in saved
    again = invoke("train", "--config", str(run_a / "config.yaml"))
    assert again.exit_code == 0, again.output
    run_b = run_a.parent / "2"
    assert metrics(run_b) == metrics(run_a)  # same seed, same numbers, run after run
    assert json.loads((run_b / "results.json").read_text()) == json.loads((run_a / "results.json").read_text())
    assert (run_b / "config.yaml").read_text() == saved


def test_command_line_overrides_the_file_in_toml_and_json(micro_digits, tmp_path: Path) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text('arch = "simplecnn"\ndataset = "microdigits"\nepochs = 3\nbatch-size = 16\nthreads = 1\n'
                    'scheduler = "multistep"\nmilestones = [1]\ngamma = 0.5\nlr = 0.02\nplots = false\n')
    result = invoke("train", "--config", str(toml), "--epochs", "2", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "simplecnn-microdigits" / "1"
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [float(r["lr"]) for r in rows] == [0.02, 0.01]  # the file's schedule, the command line's epochs
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 2 and config["milestones"] == [1] and config["batch_size"] == 16

    as_json = tmp_path / "exp.json"
    as_json.write_text(json.dumps({"arch": "simplecnn", "dataset": "microdigits", "epochs": 1, "threads": 1,
                                   "plots": False, "optimizer": "rmsprop"}))
    result = invoke("train", "--config", str(as_json), "--optimizer", "adamw", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir.parent / "2" / "config.json").read_text())
    assert config["optimizer"] == "adamw" and config["weight_decay"] == 0.01  # AdamW's own default decay


def test_cli_defaults_are_the_config_defaults() -> None:
    """A flag left out means the TrainConfig default, with or without --config: the two must agree."""
    import typer.main

    from cnnctl.recipe.config import TrainConfig

    command = typer.main.get_command(app).commands["train"]
    defaults = TrainConfig(arch="x")
    checked = 0
    for param in command.params:
        if hasattr(defaults, param.name) and param.name != "arch":
            assert param.default == getattr(defaults, param.name), param.name
            checked += 1
    assert checked >= 35


@pytest.mark.parametrize("args, fragments", [
    (("--epochs", "-1"), ("--epochs must be at least 1",)),
    (("--lr", "0"), ("--lr must be positive",)),
    (("--val-split", "0", "--scheduler", "plateau"), ("--scheduler plateau needs a validation split",)),
    (("--val-split", "0", "--patience", "3"), ("--patience", "validation split")),
    (("--scheduler", "cosine-restart"), ("unknown scheduler", "did you mean cosine-restarts?")),
    (("--warmup-epochs", "1"), ("does not combine with --scheduler onecycle",)),
    (("--nesterov",), ("--nesterov applies to --optimizer sgd",)),
    (("--optimizer", "sgd", "--nesterov", "--momentum", "0"), ("--nesterov needs --momentum > 0",)),
    (("--monitor", "val_accuracy"), ("did you mean val_acc?",)),
    (("--scheduler", "multistep", "--milestones", "5,2"), ("--milestones must be increasing",)),
    (("--label-smoothing", "1.5"), ("--label-smoothing",)),
    (("--min-lr", "1"), ("--min-lr must be in [0, lr)",)),
    (("--amp-dtype", "fp8"), ("unknown --amp-dtype",)),
    (("--augment", "flop"), ("unknown augmentation",)),
    (("--dropout", "1.5"), ("--dropout must be in [0, 1)",)),
])
def test_contradictory_or_invalid_options_fail_before_any_work(micro_digits, tmp_path: Path, args, fragments) -> None:
    result = invoke("train", "simplecnn", *FAST, "--out", str(tmp_path / "runs"), *args)
    one_line_error(result, *fragments)
    assert not (tmp_path / "runs").exists()


def test_unreadable_config_files(micro_digits, tmp_path: Path) -> None:
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("arch: simplecnn\nbatch_sise: 16\n")
    one_line_error(invoke("train", "--config", str(bad_key)), "batch_sise", "did you mean batch_size?")
    bad_value = tmp_path / "b.yaml"
    bad_value.write_text("arch: simplecnn\nepochs: ten\n")
    one_line_error(invoke("train", "--config", str(bad_value)), "epochs must be a whole number, got 'ten'")
    broken = tmp_path / "c.toml"
    broken.write_text("arch = \n")
    one_line_error(invoke("train", "--config", str(broken)), "not valid TOML")
    listing = tmp_path / "d.json"
    listing.write_text("[1, 2]")
    one_line_error(invoke("train", "--config", str(listing)), "expected a mapping")
    one_line_error(invoke("train", "--config", str(tmp_path / "missing.yaml")), "no such file")
    one_line_error(invoke("train"), "name an architecture")


def test_resume_refuses_contradictions(micro_digits, tmp_path: Path) -> None:
    result = cnnctl.train(arch="simplecnn", dataset="microdigits", epochs=1, batch_size=16, threads=1, plots=False,
                          out=str(tmp_path / "runs"))
    run = str(result.run_dir)
    one_line_error(invoke("train", "lenet5", "--resume", run), "trains simplecnn, not lenet5")
    one_line_error(invoke("train", "--resume", run, "--lr", "0.1"), "--lr cannot change")
    one_line_error(invoke("train", "--resume", run, "--config", str(result.run_dir / "config.yaml")),
                   "--config and --resume do not combine")
    one_line_error(invoke("train", "--resume", run), "already finished 1 of 1 epochs", "--epochs N")
    one_line_error(invoke("train", "--resume", str(result.run_dir / "best.safetensors")), "is the best checkpoint")
    one_line_error(invoke("train", "--resume", str(tmp_path / "nowhere")), "no such run folder")
    with run_lock(result.run_dir):  # as if another process were still training it
        one_line_error(invoke("train", "--resume", run, "--epochs", "2"), "being trained by another cnnctl process")


def test_run_folders_are_unique_under_concurrent_creation(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    with context.Pool(6) as pool:
        folders = pool.starmap(create_run_dir, [(tmp_path, "race")] * 48)
    assert len(set(folders)) == 48
    assert sorted(int(p.name) for p in folders) == list(range(1, 49))


# ------------------------------------------------------------------------------------------------ training behaviour
def test_early_stopping_and_continuing_with_more_patience(micro_digits, tmp_path: Path) -> None:
    """lr 1e-9 cannot change the validation accuracy: patience 2 stops after epoch 3 of 10."""
    options = {"arch": "simplecnn", "dataset": "microdigits", "batch_size": 16, "threads": 1, "plots": False,
               "lr": 1e-9, "scheduler": "none", "patience": 2}
    result = cnnctl.train(epochs=10, out=str(tmp_path / "runs"), **options)
    assert result.stopped_early and [row["epoch"] for row in result.history] == [1, 2, 3]
    # equal accuracies: the best checkpoint is the epoch of the lowest validation loss
    lowest = min(result.history, key=lambda row: (row["val_loss"], row["epoch"]))["epoch"]
    assert checkpoint.read_meta(result.best_path).epoch == lowest
    assert result.test["best_epoch"] == lowest
    with pytest.raises(UsageError, match="stopped early after epoch 3"):
        cnnctl.train(resume=result.run_dir)
    more = cnnctl.train(resume=result.run_dir, patience=4)
    assert [row["epoch"] for row in more.history] == [1, 2, 3, 4, 5] and more.stopped_early


def test_label_smoothing_is_in_the_logged_training_loss(micro_digits, tmp_path: Path) -> None:
    """One step per epoch (the whole training split as one batch): epoch 2's train_loss is the smoothed
    cross-entropy of epoch 1's weights, (1-ε)·CE + ε·mean over classes of -log p, computed here by hand."""
    result = cnnctl.train(arch="simplecnn", dataset="microdigits", epochs=2, batch_size=80, threads=1, lr=0.5,
                          scheduler="none", optimizer="sgd", momentum=0.0, label_smoothing=0.3, keep=2,
                          plots=False, out=str(tmp_path))
    from cnnctl.data.loader import BatchLoader
    from cnnctl.engine.fit import prepare_data
    from cnnctl.progress import SilentReporter

    model, meta = checkpoint.load(result.run_dir / "checkpoints" / "epoch-001.safetensors")
    assert meta.epoch == 1
    data = prepare_data(TrainConfig(arch="simplecnn", dataset="microdigits"), SilentReporter())
    inputs, labels = next(iter(BatchLoader(data.train, data.preprocessing, batch_size=80, device=torch.device("cpu"))))
    with torch.no_grad():
        log_p = model(inputs).log_softmax(1)
    cross_entropy = -log_p[torch.arange(80), labels].mean().item()
    expected = 0.7 * cross_entropy + 0.3 * (-log_p.mean(1)).mean().item()
    assert result.history[1]["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(expected - cross_entropy) > 0.01  # the smoothing term really changes the number


def test_grad_clip_bounds_every_step(micro_digits, tmp_path: Path) -> None:
    """Plain SGD with the gradient norm clipped to c moves the weights by at most lr·c per step."""
    options = {"arch": "simplecnn", "dataset": "microdigits", "batch_size": 16, "threads": 1, "plots": False,
               "scheduler": "none", "optimizer": "sgd", "momentum": 0.0, "lr": 0.5, "epochs": 1}
    from cnnctl.models import build_model

    clipped = cnnctl.train(grad_clip=1e-3, out=str(tmp_path / "c"), **options)
    free = cnnctl.train(out=str(tmp_path / "f"), **options)
    torch.manual_seed(0)  # the run's seed: the same initial weights as both runs started from
    initial = build_model("simplecnn", num_classes=4, in_channels=1).state_dict()

    def moved(path: Path) -> float:
        final = checkpoint.read_tensors(path)
        return math.sqrt(sum(float((final[k] - initial[k]).pow(2).sum()) for k in initial))

    steps = 5
    assert moved(clipped.last_path) <= 0.5 * 1e-3 * steps * (1 + 1e-5)
    assert moved(free.last_path) > 100 * moved(clipped.last_path)


def test_amp_bf16_on_cpu_or_a_clear_fallback(micro_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnctl.engine import precision

    chosen = precision.resolve_precision(True, "auto", torch.device("cpu"))
    assert chosen.label == ("bf16" if precision.cpu_supports_bf16() else "fp32")
    result = invoke("train", "simplecnn", *FAST, "--epochs", "2", "--amp", "--no-plots", "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "a" / "simplecnn-microdigits" / "1" / "metrics.csv").open()))
    assert all(math.isfinite(float(row["train_loss"])) for row in rows)

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    result = invoke("train", "simplecnn", *FAST, "--epochs", "1", "--amp", "--no-plots", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert "no native bf16" in result.stderr and "training in fp32" in result.stderr
    fallback = precision.resolve_precision(True, "fp16", torch.device("cpu"))
    assert fallback.dtype is None and fallback.scaler is False


# ------------------------------------------------------------------------------------------------ failures
class Explodes(torch.nn.Module):
    """simplecnn-sized model whose loss becomes NaN at a chosen training step, or that runs out of memory. Each
    instance counts its own steps, so the memory-format probe's copies do not move the step that fails."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, at_step: int = 8, failure: str = "nan"):
        super().__init__()
        self.linear = torch.nn.Linear(in_channels * 28 * 28, num_classes)
        self.at_step, self.failure, self.calls = at_step, failure, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls == self.at_step:
                if self.failure == "oom":
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return out * float("nan")
        return out


@pytest.fixture()
def exploding_model():
    from cnnctl.registry import ModelSpec

    registry.models()
    registry.add_model(ModelSpec(name="explodes", builder=Explodes, description="test", family="test",
                                 input_size=(28, 28), fixed_input=True))
    yield
    registry._MODELS.pop("explodes", None)


def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_the_last_good_epoch(micro_digits, exploding_model,
                                                                            tmp_path: Path) -> None:
    result = invoke("train", "explodes", *FAST, "--epochs", "3", "--out", str(tmp_path / "runs"))
    line = one_line_error(result, "training diverged", "in epoch 2 at batch 3 of 5", "--lr", code=1, first=False)
    assert "epoch 1 are kept" in line
    run_dir = tmp_path / "runs" / "explodes-microdigits" / "1"
    assert checkpoint.read_meta(run_dir / "last.safetensors").epoch == 1
    assert read_state(run_dir).state.epoch == 1
    assert len(list(csv.DictReader((run_dir / "metrics.csv").open()))) == 1
    assert all(torch.isfinite(t).all() for t in checkpoint.read_tensors(run_dir / "best.safetensors").values())


def test_out_of_memory_suggests_a_smaller_batch(micro_digits, exploding_model, tmp_path: Path) -> None:
    config = TrainConfig(arch="explodes", dataset="microdigits", epochs=2, batch_size=16, threads=1, plots=False,
                         out=str(tmp_path / "oom"), arch_args={"failure": "oom", "at_step": 2})
    with pytest.raises(CnnctlError, match=r"out of memory .* epoch 1 at batch 2 of 5 .*try --batch-size 8"):
        cnnctl.train(config)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(micro_digits, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    real_save = safetensors.torch.save_file
    writes = {"count": 0}

    def save_file(tensors, filename, metadata=None):
        writes["count"] += 1
        if writes["count"] == 3:  # epoch 1 writes last and state (best is a copy of last); the 3rd is epoch 2's last
            with open(filename, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    options = {"arch": "simplecnn", "dataset": "microdigits", "batch_size": 16, "threads": 1, "plots": False,
               "scheduler": "step", "step_size": 1}
    with pytest.raises(CnnctlError, match="no space left on device while writing .*last.safetensors; the "
                                          "previous version is intact"):
        cnnctl.train(epochs=3, out=str(tmp_path / "runs"), **options)
    run_dir = tmp_path / "runs" / "simplecnn-microdigits" / "1"
    assert checkpoint.read_meta(run_dir / "last.safetensors").epoch == 1
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    resumed = cnnctl.train(resume=run_dir)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    straight = cnnctl.train(epochs=3, out=str(tmp_path / "straight"), **options)
    assert metrics(run_dir) == metrics(straight.run_dir)


# ------------------------------------------------------------------------------------------------ plots
def assert_real_png(path: Path, min_std: float = 5.0) -> None:
    from torchvision.io import ImageReadMode, decode_png, read_file

    image = decode_png(read_file(str(path)), mode=ImageReadMode.RGB).float()
    assert image.shape[1] >= 200 and image.shape[2] >= 200, image.shape
    assert image.std() > min_std, f"{path.name} looks blank"
    assert (image < 128).float().mean() > 0.002, f"{path.name} has almost nothing drawn"


def test_plots_of_train_eval_and_predict(micro_digits, tmp_path: Path) -> None:
    result = invoke("train", "simplecnn", *FAST, "--epochs", "2", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "simplecnn-microdigits" / "1"
    for name in ("curves.png", "confusion.png", "predictions.png"):
        assert_real_png(run_dir / name)

    evaluated = invoke("eval", str(run_dir), "--plots", str(tmp_path / "eval-plots"), "--json")
    assert evaluated.exit_code == 0, evaluated.output
    for name in ("confusion.png", "predictions.png"):
        assert_real_png(tmp_path / "eval-plots" / name)

    from torchvision.io import write_png

    from cnnctl.engine.fit import prepare_data
    from cnnctl.progress import SilentReporter

    data = prepare_data(TrainConfig(arch="simplecnn", dataset="microdigits"), SilentReporter())
    for index in range(6):
        folder = tmp_path / "images" / data.classes[int(data.test.labels[index])]
        folder.mkdir(parents=True, exist_ok=True)
        write_png(data.test.images[index], str(folder / f"{index}.png"))
    predicted = invoke("predict", str(run_dir), str(tmp_path / "images"), "--plot", str(tmp_path / "grid.png"))
    assert predicted.exit_code == 0, predicted.output
    assert_real_png(tmp_path / "grid.png")
