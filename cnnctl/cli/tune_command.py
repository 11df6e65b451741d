"""``cnnctl tune``: hyper-parameter search with Optuna over any ``cnnctl train`` option."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from cnnctl.cli._common import command, print_json, state, stderr_line
from cnnctl.cli.params import context, declare
from cnnctl.errors import UsageError
from cnnctl.recipe.commands import SEARCH, TUNE, command_values
from cnnctl.recipe.config_file import coerce_options, read_config_file


def tune(ctx: typer.Context, train_args: list[str] | None = None, param: list[str] | None = None,
         **params: Any) -> None:
    """Search hyper-parameters with Optuna: each trial is a run folder runs/tune-NAME/trial-K/1, scored by
    --monitor on the validation split (never the test set); ends with a table, best.yaml, importance.png and
    history.png."""
    from cnnctl.tune import require_optuna
    from cnnctl.tune import study as search_module

    require_optuna()
    values = command_values(TUNE, params)
    trials, timeout, space, storage = values["trials"], values["timeout"], values["space"], values["storage"]
    workers, resume, worker, quiet = values["workers"], values["resume"], values["worker"], values["quiet"]
    if resume is not None:
        if train_args or param or space:
            raise UsageError("a resumed search keeps its own options and space",
                             hint="with --resume give only --trials, --timeout, --workers or --storage")
        search = search_module.open_search(resume, storage_url=storage, trials=trials)
        if not worker:
            with search_module.budget_lock(search):
                continued = search_module.continue_interrupted(search)
            if continued:
                stderr_line(f"continuing interrupted trial(s) {', '.join(map(str, continued))} from their run "
                            "folders")
    else:
        if worker:
            raise UsageError("--worker is for the processes --workers starts, with --resume")
        if storage is not None and not param and not space and _show_study(ctx, train_args or [], storage,
                                                                            values["json_output"]):
            return
        spec, out, name_given = _new_spec(ctx, train_args or [], param or [], space, trials, values["pruner"],
                                          values["pruner_startup"])
        search = search_module.start_search(spec, out=out, name_given=name_given, storage_url=storage)
    if not worker:
        _say_start(search, workers)
    if workers > 1 and not worker:
        code = search_module.run_workers(search, workers, timeout=timeout, quiet=quiet, debug=state.debug,
                                         storage_url=storage)
        interrupted = code in (130, 143)
        if code and not interrupted:
            stderr_line(f"a worker process failed (exit {code}); the finished trials are kept")
    else:
        done = search_module.work(search, timeout=timeout, quiet=quiet)
        interrupted = done.interrupted is not None
        code = done.interrupted.exit_code if done.interrupted is not None else 0
    if worker:
        raise typer.Exit(code)
    _finish(search, values["json_output"])
    if interrupted:
        stderr_line(f"search interrupted; continue it with: cnnctl tune --resume {search.tune_dir}")
    if code:
        raise typer.Exit(code)


declare(tune, TUNE, leading=[
    context(),
    inspect.Parameter("train_args", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        list[str] | None, typer.Argument(
            metavar="ARCH [TRAIN OPTIONS]",
            help="the architecture and any `cnnctl train` options (--dataset/--data, --epochs, --limit, --monitor, "
                 "--config FILE, ...): every trial trains with them, plus its searched values")]),
    inspect.Parameter("param", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        list[str] | None, typer.Option(
            "--param", "-p", metavar="NAME=SPEC",
            help="a train option to search: lr=loguniform:1e-4:1e-1, weight_decay=uniform:0:1e-3, epochs=int:2:8, "
                 "batch_size=choice:64,128,256, optimizer=choice:adam,sgd (repeat for several; cnnctl.tune.search "
                 "takes them as its space mapping)", rich_help_panel=SEARCH)])])
command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True})(tune)


def _new_spec(ctx: typer.Context, train_args: list[str], params: list[str], space_file: str | None,
              trials: int | None, pruner: str, pruner_startup: int) -> tuple[Any, str, bool]:
    """The SearchSpec of a new search from the command line; also the folder that holds searches (--out) and
    whether --name was given."""
    from cnnctl.tune.space import build_space
    from cnnctl.tune.study import new_spec

    explicit, config_file = _parse_train_arguments(ctx, train_args)
    options: dict[str, Any] = {}
    if config_file is not None:
        options.update(coerce_options(read_config_file(config_file), source=str(config_file)))
    options.update(coerce_options(explicit, source="the command line"))
    return new_spec(options, build_space(params, space_file), trials=trials, pruner=pruner,
                    pruner_startup=pruner_startup)


def _parse_train_arguments(ctx: typer.Context, args: list[str]) -> tuple[dict[str, Any], str | None]:
    """``ARCH [TRAIN OPTIONS]`` parsed by `cnnctl train`'s own command: the options given, and --config."""
    from cnnctl.cli.train_command import _explicit_options

    root = ctx.find_root()
    train_command = root.command.get_command(root, "train")  # type: ignore[attr-defined]
    try:
        context = train_command.make_context("cnnctl tune", list(args))
    except typer.TyperException as error:  # click's parse errors, as Typer ships them
        unknown = type(error).__name__ == "NoSuchOption"
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        raise UsageError(f"{message} (not a `cnnctl train` option)" if unknown else message,
                         hint="see cnnctl tune --help and cnnctl train --help") from None
    explicit = _explicit_options(context)
    given = {name for name in context.params
             if (source := context.get_parameter_source(name)) is not None and source.name == "COMMANDLINE"}
    for refused, why in (("nproc", "each trial trains in one process; use --workers N for parallel trials"),
                         ("resume", "--resume continues a search folder here, not a run")):
        if refused in given:
            raise UsageError(f"--{refused} is not for cnnctl tune: {why}")
    return explicit, context.params.get("config_file")


def _say_start(search: Any, workers: int) -> None:
    from cnnctl.tune.storage import shown_url

    spec = search.spec
    done = sum(1 for _ in search.study.get_trials(deepcopy=False))
    where = f", {done} trial(s) already in the study" if done else ""
    stderr_line(f"search {search.tune_dir}: {spec.trials} trials of {spec.options.get('arch')}, objective "
                f"{spec.monitor} on the validation split ({spec.direction}; the test set is never used to choose), "
                f"pruner {spec.pruner}, storage {shown_url(search.url)}"
                + (f", {workers} workers" if workers > 1 else "") + where)


def _show_study(ctx: typer.Context, train_args: list[str], storage: str, json_output: bool) -> bool:
    """``cnnctl tune --storage URL --name NAME`` (no architecture, nothing to search): the table of that study as
    it stands, on any machine, with nothing written. False when the command is a search after all."""
    from cnnctl.tune.report import best_trial, summary_document, trial_rows
    from cnnctl.tune.study import show_search

    explicit, config_file = _parse_train_arguments(ctx, train_args)
    if config_file is not None or "arch" in explicit or not set(explicit) <= {"name", "out"}:
        return False
    if "name" not in explicit:
        raise UsageError("name the study to show (--name NAME), or an architecture to search with",
                         hint="e.g. cnnctl tune --storage URL --name lenet5-mnist")
    search = show_search(storage, str(explicit["name"]), str(explicit.get("out", "runs")))
    study = search.study
    _render(summary_document(search, trial_rows(study), best_trial(study), None, []), json_output)
    return True


def _finish(search: Any, json_output: bool) -> None:
    from cnnctl.tune.report import finish

    _render(finish(search), json_output)


def _render(summary: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(summary)
    else:
        _print_table(summary)
    for note in summary.get("notes", []):
        stderr_line(note)
    best = summary["best"]
    if best is None:
        stderr_line("no trial completed, so there is no best configuration yet")
        return
    from cnnctl.tune.report import format_params

    stderr_line(f"best trial {best['trial']}: {summary['monitor']} {best['value']:.4f}  "
                f"{format_params(best['params'])}  → {best['run_dir']}")
    if best["config"]:
        stderr_line(f"train it again: cnnctl train --config {best['config']}")
    if summary["plots"]:
        stderr_line("plots: " + ", ".join(summary["plots"]))


def _print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from cnnctl.tune.report import format_value

    names = list(summary["space"])
    table = Table(title=f"{summary['tune_dir']}: {summary['monitor']} ({summary['direction']})")
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column(summary["monitor"], justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("time (s)", justify="right")
    best = (summary["best"] or {}).get("trial")
    for row in summary["trials"]:
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        state = row["state"] + (f", continues {row['continues_trial']}" if "continues_trial" in row else "")
        cells = [str(row["trial"]) + (" *" if row["trial"] == best else ""), state, value]
        cells += [format_value(row["params"].get(name, "")) for name in names]
        cells += [str(row["epochs"]), "" if row["seconds"] is None else f"{row['seconds']:.1f}"]
        table.add_row(*cells)
    Console(width=max(100, 14 * (len(names) + 5))).print(table)
