"""Typer parameters generated from option declarations (cnnctl/recipe/options.py for train, cnnctl/recipe/commands.py
for eval, predict, export, tune and lr-find): one declaration gives the flag, its help, choices and default."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from cnnctl.recipe.options import Option, choice_settings


def _default_text(option: Option) -> str | None:
    """The default as ``--help`` shows it, in one style for every option: inline, ``[default: ...]``."""
    if option.derived:
        return option.derived
    if option.type is bool:
        return f"on; {option.cli_flag.replace('--', '--no-', 1)} turns it off" if option.default else None
    if option.default is None or option.argument:
        return None
    return str(option.default)


def _help(option: Option, text: str | None = None) -> str:
    default = _default_text(option)
    text = option.help if text is None else text
    return f"{text} \\[default: {default}]" if default else text


def parameter(option: Option, completions: dict[str, Any] | None = None,
              extra: dict[str, Any] | None = None) -> inspect.Parameter:
    """The Typer parameter of one option; ``completions`` maps option names to shell-completion functions and
    ``extra`` adds Typer settings the command reads from a registry above the recipe (an export format's
    names)."""
    completions = completions or {}
    extra = dict(extra or {})
    help_text = _help(option, extra.pop("help", None))
    # numbers arrive as text and are converted by the option layer, so that `--seed 1e30` or `--epochs ten` is
    # its one-line error, like the same value in a config file
    cli_type: Any = str if option.type in (int, float, list, dict) else option.type
    annotation: Any = cli_type | None if option.nullable else cli_type
    if option.argument:
        info: Any = typer.Argument(help=help_text, show_default=False,
                                   autocompletion=completions.get(option.name))
    else:
        flag = option.cli_flag
        negatable = option.type is bool and option.negatable
        declarations = [f"{flag}/{flag.replace('--', '--no-', 1)}" if negatable else flag]
        if option.short:
            declarations.append(option.short)
        settings: dict[str, Any] = ({"autocompletion": completions[option.name]} if option.name in completions
                                    else {})
        if option.choices is not None:
            settings.update(choice_settings(option.choices))
            if option.many:
                settings["metavar"] += "[,...]"
        elif option.type is bool:
            settings["metavar"] = ""  # a flag takes no value
        elif option.type is list:
            settings["metavar"] = "N,N,..."
        elif option.type in (int, float):
            settings["metavar"] = f"<{option.type.__name__}>"
        if option.metavar:
            settings["metavar"] = option.metavar
        if option.envvar:
            settings["envvar"] = option.envvar
        settings.update(extra)
        info = typer.Option(*declarations, help=help_text, rich_help_panel=option.panel, show_default=False,
                            hidden=option.hidden, **settings)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.stored_default,
                             annotation=Annotated[annotation, info])


def declare(function: Callable[..., Any], options: Sequence[Option], *, leading: Sequence[inspect.Parameter] = (),
            completions: dict[str, Any] | None = None, extra: dict[str, dict[str, Any]] | None = None
            ) -> Callable[..., Any]:
    """Give ``function(**params)`` the Typer signature of ``leading`` parameters (context, arguments) followed by
    ``options``, so that Typer parses exactly the declared options."""
    parameters = [*leading, *(parameter(option, completions, (extra or {}).get(option.name)) for option in options)]
    function.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    function.__annotations__["return"] = None
    return function


def context() -> inspect.Parameter:
    return inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
