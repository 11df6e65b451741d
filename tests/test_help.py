"""Help, `runs` and the eval headline at 80 and 120 columns, on a terminal and piped: nothing is cut or broken
mid-word, every option name appears whole, `train -h` is short and `train --help` complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
import typer
from typer.testing import CliRunner

from cnnctl import registry
from cnnctl.cli import SUMMARIES, app
from cnnctl.cli._common import wrap_fields
from cnnctl.cli.train_command import BRIEF_HELP
from cnnctl.recipe.options import OPTION_BY_NAME, OPTIONS

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def commands() -> list[tuple[str, ...]]:
    """Every command and subcommand, as the words that call it."""
    group = typer.main.get_command(app)
    found: list[tuple[str, ...]] = [()]
    for name, sub in group.commands.items():
        found.append((name,))
        found += [(name, inner) for inner in getattr(sub, "commands", {})]
    return found


def option_names(words: tuple[str, ...]) -> list[str]:
    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    return [name for param in command.params for name in (*param.opts, *param.secondary_opts)
            if name.startswith("-") and not getattr(param, "hidden", False)]


def whole(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def help_text(*args: str, columns: int) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("words", commands(), ids=lambda words: " ".join(words) or "cnnctl")
@pytest.mark.parametrize("columns", [80, 120])
def test_every_help_fits_and_names_every_option_whole(words: tuple[str, ...], columns: int) -> None:
    text = help_text(*words, "--help", columns=columns)
    assert max(len(line) for line in text.splitlines()) <= columns, text
    assert "…" not in text, text  # what a squeezed table cell ends with
    for name in option_names(words):
        assert whole(name, text), (name, text)


def test_choice_lists_are_in_the_help_text_whole() -> None:
    from cnnctl.recipe import optimizers as optim
    from cnnctl.recipe.augmentations import AUGMENT_PRESETS

    text = " ".join(help_text("train", "--help", columns=80).split())  # lines joined: a word broken would show
    assert "--optimizer NAME optimizer; one of: " + ", ".join(optim.OPTIMIZERS) in text
    assert "one of: " + ", ".join(AUGMENT_PRESETS) in text
    assert "one of: test, val, train" in " ".join(help_text("eval", "--help", columns=80).split())


def test_train_dash_h_is_the_short_list_and_dash_dash_help_the_full_one() -> None:
    assert all(name in OPTION_BY_NAME for name in BRIEF_HELP)
    short = help_text("train", "-h", columns=80)
    full = help_text("train", "--help", columns=80)
    flags = [OPTION_BY_NAME[name].cli_flag for name in BRIEF_HELP]
    assert all(whole(flag, short) for flag in flags), short
    assert not whole("--mixup", short) and not whole("--nproc", short)
    assert "cnnctl train --help" in short and len(short.splitlines()) < len(full.splitlines()) / 2
    for option in OPTIONS:
        if option.cli and not option.argument:
            assert whole(option.cli_flag, full), option.cli_flag


def test_command_summaries_are_one_line_each() -> None:
    text = help_text("--help", columns=80)
    listed = text.split("\nCommands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in listed if line.strip()]
    assert len(listed) == len(names) == len(SUMMARIES), listed  # no continuation lines
    assert set(names) == set(SUMMARIES)


def test_help_on_a_terminal_and_piped_fits_80_columns() -> None:
    environment = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    piped = subprocess.run([sys.executable, "-m", "cnnctl", "train", "--help"], capture_output=True, text=True,
                           env=environment, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert max(len(line) for line in piped.stdout.splitlines()) <= 80
    child = pexpect.spawn(sys.executable, ["-m", "cnnctl", "train", "--help"], env={**environment, "TERM": "xterm"},
                          dimensions=(40, 80), encoding="utf-8", timeout=120)
    child.expect(pexpect.EOF)
    child.close()
    screen = ESCAPES.sub("", child.before or "")
    assert child.exitstatus == 0 and max(len(line) for line in screen.splitlines()) <= 80
    assert screen.split() == piped.stdout.split()  # the same help on a terminal as in a pipe
    for name in option_names(("train",)):
        assert whole(name, screen), name


def test_the_eval_headline_wraps_between_fields_only() -> None:
    head = "resnet18 on cifar100-coarse test (10,000 images):"
    fields = ["accuracy 99.25%", "top-5 100.00%", "balanced accuracy 99.24%", "macro-F1 0.9924", "loss 0.0286",
              "ECE 0.0040", "(test-time augmentation: flip-crop)"]
    for width in (40, 80, 120):
        lines = wrap_fields(head, fields, width).splitlines()
        assert all(len(line) <= width for line in lines[1:]) and len(lines[0]) <= max(width, len(head))
        assert " ".join(" ".join(lines).split()) == " ".join([head, *fields])
        assert all(field in lines_joined for field in fields for lines_joined in ["\n".join(lines)])
    assert len(wrap_fields(head, fields, 200).splitlines()) == 1


def test_runs_keeps_long_run_names_whole_at_80_columns(tmp_path: Path) -> None:
    fixture = ROOT / "tests" / "fixtures" / "runs_v1" / "finished"
    names = ["tune-resnet18-cifar100-coarse/trial-12/1", "lenet5-mnist/1"]
    for name in names:
        target = tmp_path / name
        target.mkdir(parents=True)
        for file in fixture.iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    for columns in (80, 120):
        text = help_text("runs", str(tmp_path), columns=columns)
        assert max(len(line) for line in text.splitlines()) <= columns, text
        for name in names:
            assert any(line.strip().split(" ")[0] == name for line in text.splitlines()), text
        assert "finished" in text and registry.models()
