"""``cnnctl runs [DIR]`` (a table of run folders) and ``cnnctl runs compare RUN RUN...`` (their curves in one
PNG). The work is in :mod:`cnnctl.engine.runs`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cnnctl.cli._common import app, handle_errors, print_json, stderr_line
from cnnctl.cli.help import Command, Group
from cnnctl.recipe.options import choice_settings

DEFAULT_DIR = "runs"


class _RunsGroup(Group):
    """``runs [DIR] [OPTIONS]`` with subcommands: a first word that names a subcommand is that subcommand, not DIR
    (click would otherwise read ``compare`` as the folder); otherwise it is the listing, whose options may come
    after DIR as in any command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            args = [DEFAULT_DIR, *args]
        else:
            ctx.allow_interspersed_args = True
        return super().parse_args(ctx, args)


runs_app = typer.Typer(cls=_RunsGroup, rich_markup_mode="rich", add_completion=False)


def _sort_keys() -> tuple[str, ...]:
    from cnnctl.engine.runs import SORT_KEYS

    return SORT_KEYS


def _statuses() -> tuple[str, ...]:
    from cnnctl.engine.runs import STATUSES

    return STATUSES


def runs(
    ctx: typer.Context,
    directory: Annotated[str, typer.Argument(
        metavar="DIR", show_default=True, help="folder holding the run folders (train's --out), or one run")
    ] = DEFAULT_DIR,
    sort: Annotated[str, typer.Option(help="sort by this column (val and test: best first)",
                                      **choice_settings(_sort_keys))] = "run",
    reverse: Annotated[bool, typer.Option("--reverse", "-r", help="reverse the order")] = False,
    arch: Annotated[str | None, typer.Option(help="only runs of this architecture")] = None,
    dataset: Annotated[str | None, typer.Option(help="only runs on this dataset")] = None,
    status: Annotated[str | None, typer.Option(help="only runs with this status",
                                               **choice_settings(_statuses))] = None,
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the run folders: architecture, dataset, epochs, best epoch and value, test accuracy, training time and
    status (finished, running, interrupted or crashed)."""
    if ctx.invoked_subcommand is not None:
        return
    from cnnctl.engine.runs import list_runs

    infos = list_runs(directory, arch=arch, dataset=dataset, status=status, sort=sort, reverse=reverse)
    for info in infos:
        if info.stale_files_removed:
            stderr_line(f"{info.run}: removed {info.stale_files_removed} temporary file(s) a killed process left")
    if json_output:
        print_json([info.to_dict() for info in infos])
        return
    if not infos:
        stderr_line(f"no run folders in {directory}")
        return
    _render(infos)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _duration(seconds: float) -> str:
    if 0 < seconds < 0.5:
        return "<1s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


COLUMNS = ("run", "arch", "dataset", "epochs", "best", "val", "test", "time", "status")
RIGHT = ("epochs", "best", "val", "test", "time")


def _cells(info: Any) -> list[str]:
    value = info.best_value
    val = "—" if value is None else (f"{value:.4f}" if (info.monitor or "").endswith("loss") else _percent(value))
    return [info.run, info.arch or "?", info.dataset or "?",
            f"{info.epochs_done}/{info.epochs_planned if info.epochs_planned is not None else '?'}",
            "—" if info.best_epoch is None else str(info.best_epoch), val, _percent(info.test_acc),
            _duration(info.time_s), info.status]


def _render(infos: list[Any]) -> None:
    """One row per run; when that is wider than the terminal, each run's name gets a line of its own above its
    row, so that no name is broken."""
    from rich.cells import cell_len
    from rich.console import Console
    from rich.markup import escape

    colours = {"finished": "green", "running": "cyan", "interrupted": "yellow", "crashed": "red"}
    console = Console(highlight=False)
    rows = [_cells(info) for info in infos]
    widths = [max(cell_len(cell) for cell in column) for column in zip(COLUMNS, *rows)]
    stacked = sum(widths) + len(widths) - 1 > console.width
    first = 1 if stacked else 0
    indent = "  " if stacked else ""

    def line(cells: list[str], header: bool = False) -> str:
        parts = []
        for name, cell, width in zip(COLUMNS[first:], cells[first:], widths[first:]):
            padded = " " * (width - cell_len(cell))
            text = escape(cell)
            if name == "status" and not header:
                text = f"[{colours[cell]}]{text}[/]"
            parts.append(padded + text if name in RIGHT else text + (padded if name != "status" else ""))
        return indent + " ".join(parts)

    if stacked:
        console.print("[bold]run[/]")
    console.print(f"[bold]{line(list(COLUMNS), header=True)}[/]")
    console.print(indent + "─" * (sum(widths[first:]) + len(widths[first:]) - 1))
    for cells in rows:
        if stacked:
            console.print(escape(cells[0]), soft_wrap=True)
        console.print(line(cells), soft_wrap=True)


runs_app.callback(invoke_without_command=True)(handle_errors(runs))


def compare(
    run_dirs: Annotated[list[str], typer.Argument(metavar="RUN", help="run folders to compare")],
    output: Annotated[str, typer.Option("--output", "-o", help="the PNG to write")] = "compare.png",
) -> None:
    """Plot the runs' train/validation loss and accuracy per epoch in one PNG, one line per run."""
    from cnnctl.engine.runs import compare_runs

    print(compare_runs(run_dirs, output))


runs_app.command("compare", cls=Command)(handle_errors(compare))
app.add_typer(runs_app, name="runs", help="List run folders and their status; `runs compare` plots their curves.")
