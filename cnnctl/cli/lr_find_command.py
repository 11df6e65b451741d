"""``cnnctl lr-find``: the options of ``cnnctl train`` plus the sweep's own (cnnctl/recipe/commands.py)."""

from __future__ import annotations

from typing import Any

import typer

from cnnctl.cli._common import command, print_json, stderr_line
from cnnctl.cli.params import context, declare
from cnnctl.cli.train_command import COMPLETIONS, _explicit_options
from cnnctl.recipe.commands import LR_FIND, command_values
from cnnctl.recipe.config_file import build_train_config
from cnnctl.recipe.options import OPTIONS


def lr_find(ctx: typer.Context, **params: Any) -> None:
    """An exponential learning-rate sweep for ARCH with the options `cnnctl train` takes: a PNG of loss against
    rate (beside the run folders `cnnctl train` makes with these options) and a suggested --lr (the smoothed
    loss's minimum ÷ 10). Writes nothing else."""
    from cnnctl.engine.lr_find import RULE
    from cnnctl.engine.lr_find import lr_find as sweep

    explicit = _explicit_options(ctx)
    explicit.pop("lr", None)
    config = build_train_config(explicit, params["config_file"])
    own = command_values(LR_FIND, {option.name: params[option.name] for option in LR_FIND})
    result = sweep(config, start_lr=own["start_lr"], end_lr=own["end_lr"], steps=own["steps"],
                   plot=True if own["plot"] is None else own["plot"] or None, log=stderr_line)
    if params["json_output"]:
        print_json(result.as_dict())
        return
    if result.stopped:
        stderr_line(f"stopped after {len(result.lrs)} steps: {result.stopped}")
    if result.plot:
        stderr_line(f"wrote {result.plot}")
    stderr_line(f"rule: {RULE}")
    print(f"suggested lr: {result.suggestion:.3g}")


declare(lr_find, [*(option for option in OPTIONS if option.cli and option.sweep), *LR_FIND], leading=[context()],
        completions=COMPLETIONS)
command("lr-find")(lr_find)
