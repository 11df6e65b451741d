"""``--help`` as plain text that fits the terminal: nothing is cut, whatever the width.

Typer's boxed tables squeeze the option column at 80 columns (``--randaugment-ma…``) and break choice lists
mid-word. Here every option is written GNU-style: its names and value on the left, its help wrapped on the right,
or under it when the names are long; a closed list of choices (``choice_settings``' ``[a|b|c]`` metavar) moves
into the help text as ``one of: a, b, c``; sections follow the options' ``rich_help_panel``. A command may also
have a short help (``-h``) listing only the options most people need, with ``--help`` for all of them.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from typer.core import TyperCommand, TyperGroup

MAX_WIDTH = 100  # wider terminals get this width: long lines of help are hard to read
NAME_COLUMN = 26  # the help text starts here, unless the names are longer (then it starts on the next line)
CHOICES = re.compile(r"^\[([^\[\]]+\|[^\[\]]+)\](\[,\.\.\.\])?$")


def help_width() -> int:
    """The terminal's width (``$COLUMNS`` when set; 80 when piped), at most :data:`MAX_WIDTH`."""
    return max(40, min(shutil.get_terminal_size((80, 24)).columns, MAX_WIDTH))


def plain(text: str) -> str:
    """Help text without Rich markup escapes, on one line."""
    return " ".join(text.replace("\\[", "[").split())


def _wrap(text: str, width: int, indent: int, first: int | None = None) -> list[str]:
    """``text`` wrapped to ``width``, lines indented by ``indent`` (the first by ``first``); words stay whole."""
    start = indent if first is None else first
    return textwrap.wrap(text, width=width, initial_indent=" " * start, subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False) or [" " * start]


def _entry(param: Any, ctx: Any) -> tuple[str, str] | None:
    """(names, help) of one argument or option, from its own help record; a ``[a|b|c]`` value placeholder becomes
    ``NAME`` and ``one of: a, b, c`` in the help, before Typer's ``[default: ...]``."""
    record = param.get_help_record(ctx)
    if record is None:
        return None
    names, text = record
    if param.param_type_name == "argument":
        names = param.metavar or (param.name or "").upper()
    text = plain(text or "")
    placeholder = names.rsplit(" ", 1)[-1] if " " in names else ""
    found = CHOICES.match(placeholder)
    if found:
        names = names[: -len(placeholder)] + ("NAME[,...]" if found.group(2) else "NAME")
        choices = "one of: " + ", ".join(found.group(1).split("|"))
        body, bracket, extra = text.partition(" [default:") if " [default:" in text else (text, "", "")
        text = f"{body}; {choices}" if body else choices
        text += f"{bracket}{extra}" if bracket else ""
    names = re.sub(r" <(int|float|str|text)>", lambda match: " " + {"int": "N", "float": "X"}.get(
        match.group(1), "TEXT"), names)
    return names, text


def _rows(rows: Sequence[tuple[str, str]], width: int, column: int = NAME_COLUMN) -> list[str]:
    """Definition rows: the name at 2 and its help at ``column``, or the help under a name too long for that."""
    lines: list[str] = []
    for left, text in rows:
        name = f"  {left}"
        wrapped = _wrap(text, width, column) if text else []
        if len(name) + 2 <= column and wrapped:
            lines += [name.ljust(column) + wrapped[0][column:], *wrapped[1:]]
        else:
            lines += [*_wrap(left, width, 6, first=2), *wrapped]
    return lines


def _section(title: str, rows: Sequence[tuple[str, str]], width: int) -> list[str]:
    return ["", f"{title}:", *_rows(rows, width)] if rows else []


def _usage(command: Any, ctx: Any) -> str:
    """``Usage: cnnctl train [OPTIONS] [ARCH]``: arguments without a metavar in capitals, as in their section."""
    names = [param.name for param in command.get_params(ctx)
             if param.param_type_name == "argument" and param.metavar is None and param.name]
    pieces = []
    for piece in command.collect_usage_pieces(ctx):
        for name in names:
            piece = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", name.upper(), piece)
        pieces.append(piece)
    return " ".join(["Usage:", ctx.command_path, *pieces])


def render_command(command: Any, ctx: Any, *, only: Sequence[str] | None = None, footer: str | None = None,
                   brief_names: bool = False) -> str:
    """The help of one command; ``only`` (parameter names) keeps just those options, in that order;
    ``brief_names``: its ``-h`` is the short help and ``--help`` the full one."""
    width = help_width()
    lines = _wrap(_usage(command, ctx), width, 4, first=0)
    if command.help:
        for paragraph in re.split(r"\n\s*\n", command.help.split("\f")[0]):
            lines += ["", *_wrap(plain(paragraph), width, 2)]
    params = command.get_params(ctx)
    arguments = [param for param in params if param.param_type_name == "argument"]
    lines += _section("Arguments", [row for row in (_entry(param, ctx) for param in arguments) if row], width)
    options = [param for param in params if param.param_type_name != "argument"]

    def row_of(param: Any) -> tuple[str, str] | None:
        row = _entry(param, ctx)
        if row and (brief_names or only is not None) and param.name == "help":
            return row[0], "-h: the options most runs need; --help: all of them"
        return row

    if only is not None:
        by_name = {param.name: param for param in options}
        chosen = [by_name[name] for name in [*only, "help"] if name in by_name]
        lines += _section("Options", [row for row in map(row_of, chosen) if row], width)
    else:
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in options:
            row = row_of(param)
            if row:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(row)
        for title, rows in panels.items():
            lines += _section(title, rows, width)
    if footer:
        lines += ["", *_wrap(footer, width, 0)]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def render_group(group: Any, ctx: Any) -> str:
    """The help of a command with subcommands: its own options, then one line per command."""
    width = help_width()
    text = render_command(group, ctx)
    names = group.list_commands(ctx)
    rows = []
    for name in names:
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        rows.append((name, plain(sub.short_help or (sub.help or "").split("\n\n")[0])))
    if rows:
        column = min(max(len(name) for name, _ in rows) + 4, NAME_COLUMN)
        text += "\n".join(["", "Commands:", *_rows(rows, width, column)]) + "\n"
    return text


class Command(TyperCommand):
    """A Typer command whose help is :func:`render_command`'s. With ``brief_options`` set, ``-h`` shows only
    those options and ``--help`` all of them."""

    brief_options: tuple[str, ...] | None = None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render_command(self, ctx, brief_names=bool(self.brief_options)))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = args[: args.index("--")] if "--" in args else args
        if self.brief_options and "-h" in given and not ctx.resilient_parsing:
            footer = f"These are the options most runs need; `{ctx.command_path} --help` lists all of them."
            sys.stdout.write(render_command(self, ctx, only=self.brief_options, footer=footer))
            ctx.exit()
        return super().parse_args(ctx, args)


class Group(TyperGroup):
    """A Typer group whose help is :func:`render_group`'s."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render_group(self, ctx))


def with_brief_help(options: Sequence[str]) -> type[Command]:
    """A :class:`Command` class whose ``-h`` lists only ``options`` (parameter names, in this order)."""
    return type("BriefHelpCommand", (Command,), {"brief_options": tuple(options)})


__all__ = ["Command", "Group", "help_width", "render_command", "render_group", "with_brief_help"]

