"""``cnnctl calibrate``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import (
    CHECKPOINT_HELP,
    checkpoint_argument,
    command,
    complete_checkpoint,
    print_json,
    stderr_line,
)


@command("calibrate")
def calibrate_command(
    checkpoint_path: Annotated[str | None, typer.Argument(
        metavar="CHECKPOINT", help=CHECKPOINT_HELP, autocompletion=complete_checkpoint)] = None,
    target_error: Annotated[float | None, typer.Option(
        help="also choose the lowest confidence threshold whose accepted validation images are misclassified at "
             "most this often (e.g. 0.01); predict then answers 'unknown' below it")] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="write the calibrated checkpoint here \\[default: update CHECKPOINT in place]")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 1000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    root: Annotated[str | None, typer.Option(help="data folder \\[env: CNNCTL_DATA]")] = None,
    mirror: Annotated[str | None, typer.Option(help="dataset mirror \\[env: CNNCTL_MIRROR]")] = None,
    data: Annotated[str | None, typer.Option(help="the image folder of a folder run, if it moved")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Fit temperature scaling on the checkpoint's validation split and store it in the checkpoint.

    One scalar T divides the logits (LBFGS on the validation NLL): predictions stay the same, probabilities \
become honest. eval then reports the calibration error before and after, predict and export use T."""
    from cnnctl.engine.calibrate import calibrate
    from cnnctl.engine.calibration import check_target_error

    check_target_error(target_error)
    checkpoint_path = checkpoint_argument(checkpoint_path)
    written, record = calibrate(checkpoint_path, target_error=target_error, output=output, batch_size=batch_size,
                                root=root, mirror=mirror, device=device, log=stderr_line, data_dir=data)
    if json_output:
        print_json({"checkpoint": str(written), **record})
        return
    print(f"temperature {record['temperature']:.4f} on {record['images']:,} validation images: ECE "
          f"{record['ece_before']:.4f} -> {record['ece_after']:.4f}, NLL {record['nll_before']:.4f} -> "
          f"{record['nll_after']:.4f}")
    if record.get("threshold") is not None:
        print(f"threshold {record['threshold']:.4f} for error <= {record['target_error']:g}: accepts "
              f"{record['accepted']:.2%} of the validation images, {record['accepted_error']:.2%} of them wrong")
    print(f"wrote {written}")
