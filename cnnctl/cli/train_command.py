"""``cnnctl train``: its parameters are generated from the declarations in cnnctl/options.py."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from cnnctl.cli._common import command, complete_arch, complete_checkpoint, complete_dataset
from cnnctl.cli.help import with_brief_help
from cnnctl.recipe.options import OPTIONS, Option, choice_settings

# shell completion of the open-ended names (the closed lists complete through choice_settings)
COMPLETIONS = {"arch": complete_arch, "dataset": complete_dataset, "resume": complete_checkpoint}
# `cnnctl train -h`: the options most runs need, in this order (`--help` shows every option, by panel)
BRIEF_HELP = ("dataset", "data", "epochs", "batch_size", "lr", "optimizer", "augment", "pretrained", "img_size",
              "device", "out", "resume", "config_file", "seed", "patience")


def _default_text(option: Option) -> str | None:
    """The default as ``--help`` shows it, in one style for every option: inline, ``[default: ...]``."""
    if option.derived:
        return option.derived
    if option.type is bool:
        return f"on; {option.cli_flag.replace('--', '--no-', 1)} turns it off" if option.default else None
    if option.default is None or option.argument:
        return None
    return str(option.default)


def _help(option: Option) -> str:
    default = _default_text(option)
    return f"{option.help} \\[default: {default}]" if default else option.help


def _parameter(option: Option) -> inspect.Parameter:
    """The Typer parameter of one option."""
    # numbers arrive as text and are converted by the option layer, so that `--seed 1e30` or `--epochs ten` is
    # its one-line error, like the same value in a config file
    cli_type: Any = str if option.type in (int, float, list, dict) else option.type
    annotation: Any = cli_type | None if option.nullable else cli_type
    if option.argument:
        info: Any = typer.Argument(help=_help(option), show_default=False,
                                   autocompletion=COMPLETIONS.get(option.name))
    else:
        flag = option.cli_flag
        declarations = [f"{flag}/{flag.replace('--', '--no-', 1)}" if option.type is bool else flag]
        if option.short:
            declarations.append(option.short)
        extra: dict[str, Any] = {"autocompletion": COMPLETIONS[option.name]} if option.name in COMPLETIONS else {}
        if option.choices is not None:
            extra.update(choice_settings(option.choices))
            if option.many:
                extra["metavar"] += "[,...]"
        elif option.type is bool:
            extra["metavar"] = ""  # a flag takes no value
        elif option.type is list:
            extra["metavar"] = "N,N,..."
        elif option.type in (int, float):
            extra["metavar"] = f"<{option.type.__name__}>"
        info = typer.Option(*declarations, help=_help(option), rich_help_panel=option.panel, show_default=False,
                            **extra)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.stored_default,
                             annotation=Annotated[annotation, info])


def train(ctx: typer.Context, **params: Any) -> None:
    """Train ARCH on a dataset; writes runs/ARCH-DATASET/N/ with checkpoints, metrics.csv, config.yaml and plots."""
    from cnnctl.engine.interrupt import TrainingInterrupted
    from cnnctl.errors import CnnctlError, UsageError
    from cnnctl.progress import make_reporter

    explicit = _explicit_options(ctx)
    from cnnctl.recipe.options import OPTION_BY_NAME, coerce

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
        from cnnctl.recipe.config_file import coerce_options

        trainer = Trainer.resuming(resume, coerce_options(explicit, source="the command line"))
    else:
        from cnnctl.engine.fit import Trainer
        from cnnctl.recipe.config_file import build_train_config

        trainer = Trainer(build_train_config(explicit, config_file))
    # --- output location: checked writable before any data is loaded ---
    from cnnctl.fsutil import require_writable_folder

    if trainer.resume_dir is not None:
        require_writable_folder(trainer.resume_dir, option="--resume", create=False)
    else:
        require_writable_folder(trainer.config.out, option="--out")
    if nproc is not None:
        from cnnctl.cli._common import state
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
        from cnnctl.progress import end_line

        print(end_line(result.results))
    print(f"run folder: {result.run_dir}")


train.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    + [_parameter(option) for option in OPTIONS if option.cli])
train.__annotations__ = {parameter.name: parameter.annotation
                         for parameter in train.__signature__.parameters.values()}  # type: ignore[attr-defined]
train.__annotations__["return"] = None
command(cls=with_brief_help(BRIEF_HELP))(train)


def _explicit_options(ctx: typer.Context) -> dict[str, object]:
    """The configuration options given on the command line (or by environment variable), not left at defaults:
    only these override a --config file or a resumed run's settings."""
    from cnnctl.recipe.options import OPTION_BY_NAME

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
