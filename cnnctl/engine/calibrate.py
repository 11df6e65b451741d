"""``cnnctl calibrate``: fit a checkpoint's temperature (and threshold) on its validation split and store them in
its metadata. The functions it fits with are in :mod:`cnnctl.engine.calibration`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import checkpoint
from cnnctl.engine.calibration import calibration_record, check_calibration_split, check_target_error
from cnnctl.engine.evaluate import evaluate, open_evaluation
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.fsutil import require_writable_file

if TYPE_CHECKING:
    import torch


def split_logits(opened: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's float logits and label, in the split's order."""
    import torch

    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    evaluate(opened.model, opened.batches, opened.meta.num_classes,
             on_batch=lambda out, truth: (logits.append(out.float().cpu()), labels.append(truth.cpu())))
    if not logits:
        return torch.zeros(0, opened.meta.num_classes), torch.zeros(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(labels)


def calibrate(path: Any, *, target_error: float | None = None, output: Any = None, batch_size: int = 1000,
              root: str | None = None, mirror: str | None = None, device: str = "auto", log: Any = None,
              data_dir: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Fit the temperature (and with ``target_error`` the threshold) of a checkpoint on its validation split and
    store them in its metadata: in ``output`` or in place (written to a temporary file, then renamed). Returns the
    file written and the record stored."""
    check_target_error(target_error)
    source = checkpoint.existing_checkpoint(path)
    destination = Path(output) if output is not None else source
    if destination.is_dir():
        raise UsageError(f"--output {destination} is a folder", hint="name the checkpoint file to write")
    if checkpoint.read_meta(source).multilabel:  # its thresholds were tuned on the validation split in training
        raise UsageError("cnnctl calibrate fits a softmax temperature; it does not apply to multi-label checkpoints",
                         hint="their per-label thresholds are tuned on the validation split in training; "
                              "--thresholds overrides them")
    # before any work: a folder where nothing can be written is found now, not after the evaluation
    destination = require_writable_file(destination, option="--output" if output is not None else "CHECKPOINT")
    try:
        opened = open_evaluation(source, split="val", batch_size=batch_size, root=root, mirror=mirror,
                                 device=device, log=log, data_dir=data_dir)
    except UsageError as error:
        if "held out no validation split" not in error.message:
            raise
        raise UsageError(f"{source}: calibration is fitted on the validation split, and this run held out none",
                         hint="train with --val-split N (images) or a fraction") from None
    logits, labels = split_logits(opened)
    check_calibration_split(labels, opened.meta.num_classes)
    record = calibration_record(logits, labels, target_error)
    meta = opened.meta
    meta.calibration = record
    try:
        checkpoint.save(destination, opened.model, meta)
    except OSError as error:
        raise CnnctlError(f"cannot write {destination}: {error.strerror or error}") from None
    return destination, record
