"""What a person sees: every command under a pseudo-terminal (pexpect, 120 and 60 columns) and piped.

Under a terminal: no warning, no traceback, the training bar with its ETA. Piped: stdout holds only data (epoch
lines, CSV, JSON); progress and messages go to stderr.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pexpect
import pytest
from typer.testing import CliRunner

from cnnctl.cli import app

TESTS = Path(__file__).parent
LAUNCHER = """
import sys
import torch
from cnnctl import registry
from cnnctl.data.base import ImageTensors
from cnnctl.registry import DatasetSpec

def load(directory, split):  # 4 classes: a bright square at one of 4 places, on noise
    count = {"train": 640, "test": 64}[split]
    generator = torch.Generator().manual_seed(len(split))
    labels = torch.randint(0, 4, (count,), generator=generator)
    images = torch.randint(0, 60, (count, 1, 28, 28), generator=generator).to(torch.uint8)
    for label in range(4):
        top, left = 4 + 12 * (label // 2), 4 + 12 * (label % 2)
        images[labels == label, :, top:top + 8, left:left + 8] = 255
    return ImageTensors(images, labels, ("0", "1", "2", "3"), source=split)

registry.datasets()
registry.register_dataset(DatasetSpec(
    name="termdigits", description="", classes=("0", "1", "2", "3"), image_shape=(1, 28, 28), mean=(0.13,),
    std=(0.31,), train_size=640, test_size=64, loader=load, default_val_split=64))
from cnnctl.cli import main
main(sys.argv[1:])
"""
TRAIN = ["train", "lenet5", "--dataset", "termdigits", "--epochs", "2", "--batch-size", "16", "--threads", "1"]
# the bar's statistics: steps, running-mean loss, then the time left in the epoch and in the run
BAR = re.compile(r"\d+/\d+ +loss \d\.\d{4} .*ETA \d+:\d\d.*run (ETA )?\d+:\d\d")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with the launcher (a dataset in memory, nothing to download) and class-named images."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("terminal")
    (folder / "cnnctl_launcher.py").write_text(LAUNCHER)
    rng = np.random.default_rng(0)
    for index in range(24):  # the launcher's pattern, in folders named after the classes
        label = index % 4
        pixels = rng.integers(0, 60, (28, 28)).astype(np.uint8)
        top, left = 4 + 12 * (label // 2), 4 + 12 * (label % 2)
        pixels[top:top + 8, left:left + 8] = 255
        (folder / "images" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / "images" / str(label) / f"{index:02d}.png")
    return folder


def environment(workdir: Path, columns: int) -> dict[str, str]:
    return {**os.environ, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color",
            "CNNCTL_DATA": str(workdir / "data"), "PYTHONWARNINGS": "default"}


def in_terminal(workdir: Path, *args: str, columns: int = 120) -> tuple[int, str]:
    """Run cnnctl under a pseudo-terminal; (exit code, everything it drew, escape codes removed)."""
    child = pexpect.spawn(sys.executable, [str(workdir / "cnnctl_launcher.py"), *args], cwd=str(workdir),
                          env=environment(workdir, columns), dimensions=(40, columns), encoding="utf-8",
                          timeout=240)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, ANSI.sub("\n", child.before)


def piped(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(workdir / "cnnctl_launcher.py"), *args], cwd=workdir,
                          env=environment(workdir, 120), capture_output=True, text=True, timeout=240)


def assert_clean(screen: str) -> None:
    assert "Warning" not in screen and "Traceback" not in screen, screen


@pytest.fixture(scope="module")
def trained(workdir: Path) -> str:
    """A two-epoch run drawn on a 120-column terminal; the screen it drew."""
    code, screen = in_terminal(workdir, *TRAIN)
    assert code == 0, screen
    return screen


def test_training_on_a_terminal_draws_the_bar_with_eta_and_no_warning(trained: str) -> None:
    assert_clean(trained)
    assert BAR.search(trained), trained
    assert re.search(r"\d+ img/s", trained)
    assert "sanity check on 2 validation batches" in trained
    assert re.search(r"epoch 1/2  train loss .* ETA \d+:\d\d", trained)  # the finished epoch says what is left
    assert "test accuracy" in trained and "run folder: runs/lenet5-termdigits/1" in trained


def test_training_on_a_narrow_terminal_fits_its_bar(workdir: Path, trained: str) -> None:
    code, screen = in_terminal(workdir, *TRAIN, "--epochs", "1", "--limit", "320", "--no-plots", columns=60)
    assert code == 0, screen
    assert_clean(screen)
    bars = [line for line in screen.splitlines() if BAR.search(line)]
    assert bars and all(len(line.rstrip()) <= 60 for line in bars), bars


def test_training_piped_prints_only_data_on_stdout(workdir: Path, trained: str) -> None:
    result = piped(workdir, *TRAIN, "--limit", "320", "--no-plots")
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines[:2]] == ["epoch 1/2", "epoch 2/2"]
    assert re.search(r"ETA \d+:\d\d$", lines[0]) and "ETA" not in lines[1]  # nothing is left after the last
    assert lines[2].startswith("test accuracy") and lines[3].startswith("run folder: ") and len(lines) == 4
    assert "sanity check" in result.stderr and "training lenet5 on termdigits" in result.stderr
    assert "\x1b[" not in result.stdout + result.stderr  # no bar, no colour codes in a log


MNIST_MIRROR = "<the real MNIST folder>"  # resolved in the test, so collecting the tests fetches nothing


@pytest.mark.parametrize("args, expected", [
    (("download", "mnist", "--mirror", MNIST_MIRROR), ("mnist", "ready")),  # copied and verified, with a bar
    (("eval", "runs/lenet5-termdigits", "--plots", "evalplots"),
     ("using the latest run in runs/lenet5-termdigits", "accuracy")),
    (("predict", "images", "--plot", "grid.png", "-o", "predictions.csv"),
     ("predicting", "wrote grid.png", "whose folder names their class")),  # "predicting": the bar over files
    (("export", "--format", "torchscript"), ("verified on",)),
    (("summary", "lenet5", "--input-size", "32x32"), ("input 1x32x32",)),
    (("list",), ("architectures", "datasets")),
    (("doctor",), ("packages", "devices", "folders")),
])
def test_commands_on_a_terminal_are_clean(workdir: Path, trained: str, args: tuple[str, ...],
                                          expected: tuple[str, ...]) -> None:
    if MNIST_MIRROR in args:
        from real_mnist import mnist_mirror

        args = tuple(str(mnist_mirror()) if arg == MNIST_MIRROR else arg for arg in args)
    code, screen = in_terminal(workdir, *args)
    assert code == 0, screen
    assert_clean(screen)
    for fragment in expected:
        assert fragment in screen, screen


def test_predict_piped_writes_csv_on_stdout_and_the_rest_on_stderr(workdir: Path, trained: str) -> None:
    result = piped(workdir, "predict", "images")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 24 and all(row["class"] in "0123" for row in rows)
    truth_matches = sum(Path(row["path"]).parent.name == row["class"] for row in rows)
    match = re.search(r"accuracy (\d+\.\d\d)% \((\d+) of 24 images", result.stderr)
    assert match and int(match[2]) == truth_matches  # the accuracy counts what the CSV shows
    assert float(match[1]) == pytest.approx(100 * truth_matches / 24, abs=0.01)
    assert "using the latest run" in result.stderr and "images/s" in result.stderr


def test_eval_piped_json_is_the_whole_stdout(workdir: Path, trained: str) -> None:
    result = piped(workdir, "eval", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == 64 and report["checkpoint"].startswith("runs/lenet5-termdigits/")
    assert "using the latest run" in result.stderr


def test_one_image_does_not_claim_zero_images_per_second(workdir: Path, trained: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    image = next((workdir / "images").rglob("*.png"))
    monkeypatch.chdir(workdir)
    result = runner.invoke(app, ["predict", str(image)])
    assert result.exit_code == 0, result.output
    assert "predicted 1 of 1 image in" in result.stderr and "images/s" not in result.stderr


def test_completion_offers_runs_choices_and_architectures(workdir: Path, trained: str) -> None:
    def complete(words: str) -> list[str]:
        env = {**environment(workdir, 120), "_CNNCTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split(" ")) - 1)}
        result = subprocess.run([sys.executable, "-m", "cnnctl"], cwd=workdir, env=env, capture_output=True,
                                text=True, timeout=60)
        return result.stdout.split()

    assert "runs/lenet5-termdigits/1" in complete("cnnctl eval ")
    assert complete("cnnctl eval --split ") == ["test", "val", "train"]
    assert complete("cnnctl summary lenet") == ["lenet5", "lenet"]
    assert complete("cnnctl train lenet") == ["lenet5", "lenet"]
    assert "fashion-mnist" in complete("cnnctl train lenet5 --dataset f")
    assert complete("cnnctl export --format t") == ["torchscript"]
    script = subprocess.run([sys.executable, "-m", "cnnctl", "--show-completion", "zsh"], cwd=workdir,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0 and "compdef _cnnctl_completion cnnctl" in script.stdout


# --- in-process checks of the pieces ---------------------------------------------------------------------------
def test_the_rich_reporter_reads_an_undetached_loss_without_a_warning() -> None:
    import torch
    from rich.console import Console

    from cnnctl.progress import RichReporter

    screen = io.StringIO()
    reporter = RichReporter(Console(file=screen, force_terminal=True, width=120))
    weight = torch.ones((), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reporter.start({"arch": "a", "dataset": "d", "train": 1, "val": 0, "test": 0, "device": "cpu",
                        "parameters": 1, "epochs": 2, "batch_size": 4, "run_dir": "r"})
        reporter.epoch_start(1, 2, 3)
        for step, value in enumerate((3.0, 2.0, 1.0), start=1):
            reporter.step(step, weight * value)  # as the loop hands it over: part of the autograd graph
        reporter.phase("validating")
        reporter.close()
    assert "loss 2.0000" in ANSI.sub("", screen.getvalue())  # the running mean of 3, 2, 1, not the last loss
    assert "epoch 1/2 validating…" in ANSI.sub("", screen.getvalue())


def test_run_clock_estimates_the_rest_of_the_run() -> None:
    from cnnctl.progress import RunClock, duration, rate_text

    clock_time = [100.0]
    clock = RunClock(now=lambda: clock_time[0])
    clock.epoch_start(1, 3, 10)
    clock.stepped(1)
    clock_time[0] += 5.0  # 5 of 10 steps in 5 s: 5 s left in the epoch, then two epochs of 10 s
    assert clock.epoch_left(5) == 5.0 and clock.run_left(5) == 25.0
    clock_time[0] += 7.0  # the epoch ended after 12 s (validation included): that is the pace from now on
    assert clock.run_left() == 24.0
    clock.epoch_start(2, 3, 10)
    clock.stepped(1)
    clock_time[0] += 1.0
    assert clock.run_left(2) == pytest.approx(4.0 + 12.0)  # 8 steps at 0.5 s, then one epoch like the first
    resumed = RunClock(now=lambda: clock_time[0])  # resumed after 6 of 10 steps: only the steps trained here count
    resumed.epoch_start(1, 1, 10)
    resumed.stepped(7)
    clock_time[0] += 1.0
    assert resumed.epoch_left(8) == 1.0  # 2 steps took 1 s, 2 are left
    assert duration(3725) == "1:02:05" and duration(65) == "1:05"
    assert rate_text(1, 0.9) == "" and rate_text(10, 2.0) == "5.0 img/s" and rate_text(7, 7.01) == "1.0 img/s"
    assert rate_text(25_000, 1) == "25,000 img/s"


def test_summary_input_size_takes_the_models_channels_and_refuses_ambiguity() -> None:
    from cnnctl.errors import UsageError
    from cnnctl.summary import parse_input_size

    assert parse_input_size("32x32", 3) == (3, 32, 32)
    assert parse_input_size("64", 1) == (1, 64, 64)
    assert parse_input_size("3x40x48", 1) == (3, 40, 48)
    for text in ("3x32", "32x3", "banana", "0x32x32", "1x2x3x4"):
        with pytest.raises(UsageError):
            parse_input_size(text, 3)
    result = runner.invoke(app, ["summary", "resnet18", "--input-size", "40x40", "--json"])
    assert json.loads(result.stdout)["input_shape"] == [3, 40, 40]


def test_latest_run_group_folder_and_pickles(tmp_path: Path) -> None:
    from cnnctl.engine.runs import latest_run, resolve_checkpoint
    from cnnctl.errors import CnnctlError, UsageError

    runs = tmp_path / "runs"
    for number, when in (("1", 1000), ("2", 3000), ("10", 2000)):
        (runs / "lenet5-mnist" / number).mkdir(parents=True)
        best = runs / "lenet5-mnist" / number / "best.safetensors"
        best.write_bytes(b"x")
        os.utime(best, (when, when))
    (runs / "other" / "1").mkdir(parents=True)
    (runs / "other" / "1" / "last.safetensors").write_bytes(b"x")
    os.utime(runs / "other" / "1" / "last.safetensors", (1500, 1500))
    said: list[str] = []
    assert latest_run(runs) == runs / "lenet5-mnist" / "2"  # written last, though 10 is the higher number
    assert resolve_checkpoint(None, runs=runs, log=said.append) == str(runs / "lenet5-mnist" / "2" /
                                                                       "best.safetensors")
    assert resolve_checkpoint(str(runs / "other"), runs=runs, log=said.append).endswith("other/1/last.safetensors")
    assert said[0].startswith("using the latest run: ") and said[1].startswith("using the latest run in ")
    with pytest.raises(UsageError, match="no run under"):
        resolve_checkpoint(None, runs=tmp_path / "nothing")
    with pytest.raises(CnnctlError, match="never unpickles") as refused:
        resolve_checkpoint("weights.pth")
    assert "--pretrained weights.pth" in refused.value.hint


def test_eval_of_a_pth_is_one_line_suggesting_pretrained(tmp_path: Path) -> None:
    (tmp_path / "model.pth").write_bytes(b"\x80\x02}q\x00.")
    result = runner.invoke(app, ["eval", str(tmp_path / "model.pth")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "never unpickles" in lines[0] and "--pretrained" in lines[0]
    assert "header" not in lines[0]


def test_mistakes_come_first_then_every_class() -> None:
    from cnnctl.plots import mistakes_first

    predicted = [0, 0, 0, 1, 1, 2, 2, 1]
    truth = [0, 0, 0, 1, 1, 2, 2, 2]  # the last is wrong
    confidence = [0.9] * 8
    assert mistakes_first(predicted, truth, confidence, 4) == [7, 0, 3, 5]
    wrong_pair = mistakes_first([1, 0, 1], [0, 0, 0], [0.6, 0.9, 0.8], 2)
    assert wrong_pair == [2, 1]  # the more confident mistake first, and a tile kept for a correct one


def test_curves_use_a_log_axis_for_the_loss(tmp_path: Path) -> None:
    from PIL import Image

    from cnnctl import plots

    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 1.2 / e, "val_acc": 0.5, "lr": 0.1}
               for e in (1, 2, 3)]
    seen = {}
    original = plots._save

    def capture(figure, path):
        seen["scale"] = figure.axes[0].get_yscale()
        return original(figure, path)

    plots._save = capture
    try:
        path = plots.plot_curves(history, tmp_path / "curves.png")
    finally:
        plots._save = original
    assert seen["scale"] == "log" and Image.open(path).size[0] > 0


def test_list_fits_80_columns_and_wide_shows_everything() -> None:
    narrow = runner.invoke(app, ["list"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    assert "classic LeNet-5" in narrow.stdout and "conv 6@5x5" not in narrow.stdout
    wide = runner.invoke(app, ["list", "--wide"], env={"COLUMNS": "200"})
    assert "conv 6@5x5" in wide.stdout and "min input" in wide.stdout


def test_help_lists_commands_in_workflow_order_with_version_debug_and_no_bool_type() -> None:
    result = runner.invoke(app, ["-h"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    order = [name for name in ("download", "train", "eval", "predict", "export", "summary", "list", "doctor")
             if re.search(rf"^  {name} ", result.stdout, re.MULTILINE)]
    positions = [result.stdout.index(f"\n  {name} ") for name in order]
    assert len(order) == 8 and positions == sorted(positions)
    assert "--version" in result.stdout and "--debug" in result.stdout and "--install-completion" in result.stdout
    for command in ([], ["eval"], ["predict"], ["export"], ["list"], ["doctor"]):
        text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"}).stdout
        assert "<bool>" not in text, command
    assert "one of: test, val, train" in runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "120"}).stdout
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and re.match(r"cnnctl \d+\.\d+\.\d+ \(torch ", version.stdout)


def test_doctor_reports_versions_devices_and_an_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = runner.invoke(app, ["doctor", "--json", "--root", str(locked / "data")])
        writable = os.access(locked, os.W_OK)  # root may write anyway
    finally:
        locked.chmod(0o700)
    report = json.loads(result.stdout)
    versions = {row["name"]: row["version"] for row in report["packages"]}
    import torch

    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert {row["name"] for row in report["devices"]} == {"cpu", "cuda", "mps"}
    data = next(row for row in report["folders"] if row["name"] == "data")
    assert data["writable"] == writable and result.exit_code == (0 if writable else 1)
    assert data["path"] == str(locked / "data")
