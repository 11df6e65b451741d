"""The one place a training configuration is checked and completed before a run.

:class:`~cnnctl.recipe.config.TrainConfig` checks and derives what the options alone decide. What needs the
published-weights catalogue (cnnctl/models/weights.py) is done here: whether ``--normalize weights`` and
``--grey-input replicate`` have ImageNet weights to follow, whether an offline run has its weights file, and the
fine-tuning defaults those weights decide. The trainer calls :func:`check_config` when it is made and
:func:`complete_config` when it runs; what the data settles comes later, from ``PreparedData.resolved``.
"""

from __future__ import annotations

from typing import Any

from cnnctl.engine.distill import check_distill_config
from cnnctl.errors import UsageError
from cnnctl.models.weights import (
    ensure_weights_file,
    grey_input_mode,
    imagenet_weights_for_config,
    offline,
    weights_for_config,
)
from cnnctl.recipe.options import label


def check_config(config: Any) -> None:
    """Reject out-of-range or contradictory options before any work starts, the published weights included:
    they exist for the architecture, and offline their file is already here (one line naming it and its folder
    otherwise), before any data is loaded."""
    config.validate()
    check_distill_config(config)  # --teacher: a readable checkpoint, not with --linear-probe
    if not config.pretrained:
        return
    imagenet = imagenet_weights_for_config(config)
    if config.normalize == "weights" and imagenet is None:
        raise UsageError(f"{label('normalize')} weights applies to ImageNet weights ({label('pretrained')} "
                         f"imagenet, or a file of them); the preprocessing of {config.pretrained} is not known",
                         hint=f"leave {label('normalize')} out, or use {label('normalize')} data")
    if config.grey_input == "replicate" and imagenet is None:
        raise UsageError(f"{label('grey_input')} replicate applies to ImageNet weights ({label('pretrained')} "
                         "imagenet, or a file of them); other weights files meet grey images with their first "
                         "convolution's filters summed",
                         hint=f"leave {label('grey_input')} out, or use {label('grey_input')} sum")
    weights = weights_for_config(config)
    if weights is not None and offline(config.offline):
        ensure_weights_file(weights, mirror=config.weights_mirror, offline_only=True)


def complete_config(config: Any) -> None:
    """Replace every "depends on other options" default by its value, so the saved configuration says exactly
    what ran: the options' own (:meth:`TrainConfig.resolve_defaults`), then fine-tuning's grey input,
    normalisation and, for image folders, augmentation, which the ImageNet weights decide."""
    config.resolve_defaults()
    if not config.pretrained:
        return
    imagenet = imagenet_weights_for_config(config)
    config.grey_input = grey_input_mode(config)
    config.normalize = config.normalize or ("weights" if imagenet else "data")
    if config.augment is None and (config.data_dir or config.dataset == "folder") and imagenet:
        config.augment = "resized-crop-flip"
