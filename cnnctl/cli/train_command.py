"""``cnnctl train``: its parameters are generated from the declarations in cnnctl/recipe/options.py."""

from __future__ import annotations

from typing import Any

import typer

from cnnctl.cli._common import command, complete_arch, complete_checkpoint, complete_dataset, state
from cnnctl.cli.help import with_brief_help
from cnnctl.cli.params import context, declare
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.fsutil import require_writable_folder
from cnnctl.progress import end_line, make_reporter
from cnnctl.recipe.config_file import build_train_config, coerce_options
from cnnctl.recipe.options import OPTION_BY_NAME, OPTIONS, coerce

# shell completion of the open-ended names (the closed lists complete through choice_settings)
COMPLETIONS = {"arch": complete_arch, "dataset": complete_dataset, "resume": complete_checkpoint}
# `cnnctl train -h`: the options most runs need, in this order (`--help` shows every option, by panel)
BRIEF_HELP = ("dataset", "data", "epochs", "batch_size", "lr", "optimizer", "augment", "pretrained", "img_size",
              "device", "out", "resume", "config_file", "seed", "patience")


def train(ctx: typer.Context, **params: Any) -> None:
    """Train ARCH on a dataset; writes runs/ARCH-DATASET/N/ with checkpoints, metrics.csv, config.yaml and plots."""
    from cnnctl.engine.interrupt import TrainingInterrupted

    explicit = _explicit_options(ctx)

    if params.get("offline"):  # for everything this process (and any it starts) does: datasets obey it too
        import os

        os.environ["CNNCTL_OFFLINE"] = "1"

    config_file, resume = params["config_file"], params["resume"]
    nproc = coerce(OPTION_BY_NAME["nproc"], params["nproc"])
    if resume is not None:
        if config_file is not None:
            raise UsageError("--config and --resume do not combine: a resumed run keeps its own configuration",
                             hint="pass --resume alone (with --epochs to extend it)")
        from cnnctl.engine.fit import Trainer

        trainer = Trainer.resuming(resume, coerce_options(explicit, source="the command line"))
    else:
        from cnnctl.engine.fit import Trainer

        trainer = Trainer(build_train_config(explicit, config_file))
    # --- output location: checked writable before any data is loaded ---

    if trainer.resume_dir is not None:
        require_writable_folder(trainer.resume_dir, option="--resume", create=False)
    else:
        require_writable_folder(trainer.config.out, option="--out")
    if nproc is not None:
        from cnnctl.engine.distributed import start_processes

        code = start_processes(trainer.config, nproc, ["train", *_given_arguments(ctx, leave_out="nproc")],
                               resume_dir=trainer.resume_dir, debug=state.debug)
        if code is not None:
            raise typer.Exit(code)
    quiet = params["quiet"]
    reporter = make_reporter(quiet=quiet)
    trainer.reporter = reporter
    try:
        result = trainer.run()
    except TrainingInterrupted as error:
        if not trainer.dist.is_main:  # rank 0 says how to resume; the other ranks' copies would repeat it
            raise typer.Exit(error.exit_code) from None
        raise
    except CnnctlError as error:
        if trainer.dist.enabled and not trainer.dist.is_main:  # say which process it was (it may be alone)
            error.args = (f"[rank {trainer.dist.rank}] {error}",)
        raise
    finally:
        reporter.close()
    if not trainer.dist.is_main:
        return
    if quiet and result.results:

        print(end_line(result.results))
    print(f"run folder: {result.run_dir}")


declare(train, [option for option in OPTIONS if option.cli], leading=[context()], completions=COMPLETIONS)
command(cls=with_brief_help(BRIEF_HELP))(train)


def _explicit_options(ctx: typer.Context) -> dict[str, object]:
    """The configuration options given on the command line (or by environment variable), not left at defaults:
    only these override a --config file or a resumed run's settings."""

    explicit = {}
    for name, value in ctx.params.items():
        option = OPTION_BY_NAME.get(name)
        source = ctx.get_parameter_source(name)
        if option is not None and option.config and source is not None and source.name in (
                "COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            explicit[name] = value
    return explicit


def _given_arguments(ctx: typer.Context, leave_out: str) -> list[str]:
    """The arguments and options given on the command line, written out again (what `--nproc` passes on to
    every process; options from the environment reach them through it)."""
    args: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name == leave_out or source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            args.append(str(value))
        elif getattr(param, "is_flag", False):
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args
