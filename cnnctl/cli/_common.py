"""The Typer app and what every command shares: error handling, output helpers."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from cnnctl import registry
from cnnctl.cli.help import Command, Group
from cnnctl.errors import CnnctlError
from cnnctl.fsutil import displayable, os_reason

app = typer.Typer(
    name="cnnctl",
    cls=Group,
    help="Train, evaluate and run image-classification CNNs. Add --debug anywhere for full tracebacks.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _flags_show_no_type() -> None:
    """A flag takes no value, so its help row shows no ``<bool>`` type (Typer shows one for every option)."""
    try:
        from typer.core import TyperOption

        shown = TyperOption.display_type_rich
    except (ImportError, AttributeError):  # another Typer: its help shows types its own way
        return
    if getattr(shown, "cnnctl_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.cnnctl_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()


class _State:
    debug = False


state = _State()
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    """Print one line on stderr and exit with ``code``."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn cnnctl's errors (and anything unexpected) into one stderr line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except CnnctlError as error:
            if state.debug:
                traceback.print_exc()
            fail(str(error), error.exit_code)
        except KeyboardInterrupt:
            if state.debug:
                traceback.print_exc()
            fail("interrupted", 130)
        except Exception as error:  # noqa: BLE001 - the last line of defence, shown fully with --debug
            if state.debug:
                raise
            if isinstance(error, OSError) and error.filename is not None:  # a file the system refuses: not a bug

                fail(f"cannot use {displayable(str(error.filename))}: {os_reason(error)}")
            fail(f"unexpected {type(error).__name__}: {error} (run again with --debug for the traceback)")

    return wrapper  # type: ignore[return-value]


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """``@command()`` = ``@app.command()`` with cnnctl's error handling."""

    kwargs.setdefault("cls", Command)

    def decorate(func: F) -> F:
        app.command(name, **kwargs)(handle_errors(func))
        return func

    return decorate


def wrap_fields(head: str, fields: list[str], width: int) -> str:
    """``head``, a space, then ``fields`` two spaces apart, wrapped only between fields (a number is never
    split); continuation lines are indented by two."""
    lines, current = [], head
    for field in fields:
        gap = " " if current == head else "  "
        if len(current) + len(gap) + len(field) > width and current.strip():
            lines.append(current)
            current = "  " + field
        else:
            current = f"{current}{gap}{field}" if current else field
    return "\n".join([*lines, current])


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def checkpoint_argument(target: str | None) -> str:
    """A command's CHECKPOINT argument made concrete: nothing → the latest run under ./runs, a run group → its
    latest run (said on stderr), a .pth → refused with what to do instead."""
    from cnnctl.engine.runs import resolve_checkpoint

    return resolve_checkpoint(target, log=stderr_line)


def complete_checkpoint(incomplete: str) -> list[str]:
    from cnnctl.engine.runs import completion_candidates

    return completion_candidates(incomplete)


def complete_arch(incomplete: str) -> list[str]:
    return [name for name in registry.models() if name.startswith(incomplete)]


def complete_dataset(incomplete: str) -> list[str]:
    return [name for name in registry.datasets() if name.startswith(incomplete)]


CHECKPOINT_HELP = ".safetensors file, run folder or run group (its latest run) \\[default: the latest run under ./runs]"
