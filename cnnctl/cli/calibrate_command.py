"""``cnnctl calibrate``."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from cnnctl.cli._common import (
    CHECKPOINT_HELP,
    checkpoint_argument,
    command,
    complete_checkpoint,
    print_json,
    stderr_line,
)
from cnnctl.cli.params import declare
from cnnctl.recipe.commands import CALIBRATE, command_values


def calibrate_command(checkpoint_path: str | None = None, **params: Any) -> None:
    """Fit temperature scaling on the checkpoint's validation split and store it in the checkpoint.

    One scalar T divides the logits (LBFGS on the validation NLL): predictions stay the same, probabilities \
become honest. eval then reports the calibration error before and after, predict and export use T."""
    from cnnctl.engine.calibrate import calibrate

    values = command_values(CALIBRATE, params)  # before any work: --target-error 2 is one line
    checkpoint_path = checkpoint_argument(checkpoint_path)
    written, record = calibrate(checkpoint_path, target_error=values["target_error"], output=values["output"],
                                batch_size=values["batch_size"], root=values["root"], mirror=values["mirror"],
                                device=values["device"], log=stderr_line, data_dir=values["data"])
    if values["json_output"]:
        print_json({"checkpoint": str(written), **record})
        return
    print(f"temperature {record['temperature']:.4f} on {record['images']:,} validation images: ECE "
          f"{record['ece_before']:.4f} -> {record['ece_after']:.4f}, NLL {record['nll_before']:.4f} -> "
          f"{record['nll_after']:.4f}")
    if record.get("threshold") is not None:
        print(f"threshold {record['threshold']:.4f} for error <= {record['target_error']:g}: accepts "
              f"{record['accepted']:.2%} of the validation images, {record['accepted_error']:.2%} of them wrong")
    print(f"wrote {written}")


declare(calibrate_command, CALIBRATE, leading=[inspect.Parameter(
    "checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
    annotation=Annotated[str | None, typer.Argument(metavar="CHECKPOINT", help=CHECKPOINT_HELP,
                                                    autocompletion=complete_checkpoint)])])
command("calibrate")(calibrate_command)
