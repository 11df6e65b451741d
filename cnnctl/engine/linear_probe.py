"""``--linear-probe``: the run's one "epoch" trains only a new linear classifier on the pretrained backbone's
features, computed once.

The backbone stays in eval mode (BatchNorm statistics included) and is never updated; its features of the
un-augmented, centre-cropped training images are computed in one pass, then :func:`fit_linear_head` takes a few
hundred full-batch steps on them. The head goes into the model's classifier and the run continues as any other:
validation, best/last checkpoints, metrics.csv, the final test, plots. ``cnnctl eval`` and ``predict`` use the
checkpoint unchanged.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import unwrap
from cnnctl.engine.features import PROBE_LR, batch_features, fit_linear_head, install_head, linear_head
from cnnctl.errors import UsageError

if TYPE_CHECKING:
    from cnnctl.engine.fit import Trainer


def check_probe_head(trainer: Trainer, model: Any) -> None:
    """The classifier must be a linear layer, in one process (before the data is read)."""
    if trainer.dist.enabled:
        raise UsageError("--linear-probe runs in one process: its features are computed once and the head "
                         "fitted in seconds", hint="leave --nproc out")

    linear_head(model, trainer.model_spec.classifier, trainer.model_spec.name)


def probe_epoch(trainer: Trainer, epoch: int) -> dict[str, float]:
    """Compute the training images' features, train the head on them and put it into the model; the row of
    metrics a training epoch would give."""
    config, data = trainer.config, trainer.data
    model = unwrap(trainer.model)
    head_module = linear_head(model, trainer.model_spec.classifier, trainer.model_spec.name)
    started = time.perf_counter()
    trainer.reporter.phase("computing features")
    # the training batches, un-augmented (the probe's configuration says so): each image once, with its label
    features, labels = batch_features(model, trainer.model_spec.classifier, trainer.train_batches)
    feature_seconds = time.perf_counter() - started
    trainer.reporter.phase("training the linear head")
    head = fit_linear_head(features.to(trainer.device), labels.to(trainer.device), len(data.classes),
                           seed=config.seed, class_weights=trainer.class_weights,
                           label_smoothing=config.label_smoothing)
    install_head(head_module, head)
    seconds = time.perf_counter() - started
    trainer.reporter.message(f"linear probe: features of {len(labels):,} training images ({features.shape[1]} "
                             f"each) in {feature_seconds:.1f}s, then {head.steps} steps of the head in "
                             f"{seconds - feature_seconds:.1f}s; training accuracy {head.accuracy:.2%}")
    return {"epoch": epoch, "train_loss": head.loss, "train_acc": head.accuracy, "lr": PROBE_LR, "lr_end": 0.0,
            "epoch_time_s": seconds, "images_per_s": len(labels) / feature_seconds if feature_seconds > 0 else 0.0}
