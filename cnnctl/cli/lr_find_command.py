"""``cnnctl lr-find``: the options of ``cnnctl train`` (generated from cnnctl/options.py) plus the sweep's own."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from cnnctl.cli._common import command, print_json, stderr_line
from cnnctl.cli.train_command import _explicit_options, _parameter
from cnnctl.recipe.options import OPTIONS

NOT_FOR_A_SWEEP = ("resume", "nproc", "quiet")

SWEEP = "Sweep"


def lr_find(ctx: typer.Context, **params: Any) -> None:
    """An exponential learning-rate sweep for ARCH with the options `cnnctl train` takes: a PNG of loss against
    rate (beside the run folders `cnnctl train` makes with these options) and a suggested --lr (the smoothed
    loss's minimum ÷ 10). Writes nothing else."""
    from cnnctl.engine.lr_find import RULE
    from cnnctl.engine.lr_find import lr_find as sweep
    from cnnctl.recipe.config_file import build_train_config

    explicit = _explicit_options(ctx)
    explicit.pop("lr", None)
    config = build_train_config(explicit, params["config_file"])
    result = sweep(config, start_lr=float(params["start_lr"]), end_lr=float(params["end_lr"]),
                   steps=int(params["steps"]), plot=True if params["plot"] is None else params["plot"] or None,
                   log=stderr_line)
    if params["json_output"]:
        print_json(result.as_dict())
        return
    if result.stopped:
        stderr_line(f"stopped after {len(result.lrs)} steps: {result.stopped}")
    if result.plot:
        stderr_line(f"wrote {result.plot}")
    stderr_line(f"rule: {RULE}")
    print(f"suggested lr: {result.suggestion:.3g}")


_OWN = [
    inspect.Parameter("start_lr", inspect.Parameter.KEYWORD_ONLY, default=1e-7, annotation=Annotated[
        float, typer.Option(min=0, help="first rate of the sweep", rich_help_panel=SWEEP)]),
    inspect.Parameter("end_lr", inspect.Parameter.KEYWORD_ONLY, default=10.0, annotation=Annotated[
        float, typer.Option(min=0, help="last rate of the sweep", rich_help_panel=SWEEP)]),
    inspect.Parameter("steps", inspect.Parameter.KEYWORD_ONLY, default=200, annotation=Annotated[
        int, typer.Option(min=10, help="optimizer steps of the sweep", rich_help_panel=SWEEP)]),
    inspect.Parameter("plot", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        str | None, typer.Option(metavar="PNG", help="where to draw loss against rate ('' for no plot) "
                                 "\\[default: OUT/NAME/lr-find.png, beside the run folders train makes]",
                                 show_default=False, rich_help_panel=SWEEP)]),
    inspect.Parameter("json_output", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--json", help="the sweep as JSON on stdout", rich_help_panel=SWEEP)]),
]

lr_find.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    + [_parameter(option) for option in OPTIONS if option.cli and option.name not in NOT_FOR_A_SWEEP and
       option.name != "lr"] + _OWN)
lr_find.__annotations__ = {parameter.name: parameter.annotation
                           for parameter in lr_find.__signature__.parameters.values()}  # type: ignore[attr-defined]
lr_find.__annotations__["return"] = None
command("lr-find")(lr_find)
