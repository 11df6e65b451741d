"""The ``cnnctl`` command line: parse options, call the library, render results. No logic lives here.

Each command is its own module; torch is imported only inside commands, so ``cnnctl --help`` stays instant.
"""

from __future__ import annotations

import os
import sys

import cnnctl.cli.export_command  # noqa: F401  (registers `cnnctl export`)
from cnnctl.cli import (  # noqa: F401
    data_commands,
    eval_command,
    info_commands,
    lr_find_command,
    predict_command,
    train_command,
)
from cnnctl.cli._common import app, state


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. ``--debug`` may appear anywhere on the line (or CNNCTL_DEBUG=1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        args.remove("--debug")
        state.debug = True
    if os.environ.get("CNNCTL_DEBUG") in ("1", "true", "yes"):
        state.debug = True
    app(args=args, prog_name="cnnctl")


__all__ = ["app", "main"]
