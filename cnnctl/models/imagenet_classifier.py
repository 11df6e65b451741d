"""Pretrained networks as ImageNet classifiers, with no training: ``cnnctl predict tv:resnet50 --pretrained
imagenet photo.jpg`` prints ImageNet class names, as timm's inference script and Ultralytics do.

The model is built for the weights' classes, loaded like ``--pretrained`` loads it for training (published
weights fetched and verified, or a local file matched by name or by order), and given a
:class:`~cnnctl.checkpoint.CheckpointMeta` as a checkpoint would carry: the class names (torchvision's
``weights.meta["categories"]``, timm's bundled ImageNet label descriptions) and the weights' own preprocessing.
The prediction code then treats it like any checkpoint. A file whose classifier is not the published one
(another number of classes) is refused: its class names are unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnctl.checkpoint import CheckpointMeta
from cnnctl.engine.device import resolve_device
from cnnctl.errors import CheckpointError
from cnnctl.models import build_model
from cnnctl.models import weights as published
from cnnctl.models.pretrained import load_pretrained
from cnnctl.models.timm_models import timm_class_names
from cnnctl.registry import get_model_spec


def class_names(arch: str, pretrained: str) -> list[str]:
    """The class names of ``arch``'s published weights ``pretrained`` (``imagenet`` for a local file, whose
    classes are assumed to be those of the architecture's recommended weights)."""
    value = pretrained if published.is_weights_name(pretrained) else "imagenet"
    found = published.resolve_cached(arch, value)
    if found.source == "timm":
        return timm_class_names(found.extra["timm_name"])
    from torchvision.models import get_weight

    return list(get_weight(found.label).meta["categories"])


def imagenet_classifier(arch: str, pretrained: str | Path = "imagenet", *, device: str = "cpu",
                        config: Any = None, log: Callable[[str], None] | None = None) -> Any:
    """``arch`` with the weights ``pretrained`` names (published weights or a local file), in eval mode on
    ``device``, carrying ``cnnctl_meta`` like a model loaded from a checkpoint. ``config`` may carry
    ``weights_mirror`` / ``offline`` for fetching published weights."""
    spec = get_model_spec(arch)
    value = str(pretrained)
    weights = (published.resolve_cached(spec.name, value) if published.is_weights_name(value)
               else published.local_imagenet_weights(spec.name, value))
    classes = class_names(spec.name, value)
    model = build_model(spec.name, num_classes=len(classes), in_channels=3)
    lines: list[str] = []
    report = load_pretrained(model, spec, value, log=lines.append, config=config)
    if report.reinitialised or report.adapted:
        raise CheckpointError(
            f"{value} does not hold {spec.name}'s {len(classes)}-class ImageNet classifier "
            f"({report.head_change or '; '.join(report.adapted)}), so its class names are unknown",
            hint=f"predict with a checkpoint trained from it (cnnctl train {spec.name} --pretrained {value} "
                 "--data DIR)")
    if report.missing:
        raise CheckpointError(f"{value} lacks {len(report.missing)} of {spec.name}'s tensors "
                              f"({', '.join(report.missing[:3])}{', ...' if len(report.missing) > 3 else ''})",
                              hint="a classifier needs every weight; pass the complete weights file")
    for line in lines:
        (log or (lambda _: None))(line)
    preprocessing = published.run_preprocessing(weights, 3, weights.preprocessing.crop, img_size=None,
                                                folder=True, grey_input="replicate")
    meta = CheckpointMeta(arch=spec.name, arch_args={}, classes=classes, preprocessing=preprocessing,
                          dataset="imagenet", pretrained=report.to_dict())
    model = model.to(resolve_device(device)).eval()
    model.cnnctl_meta = meta
    return model
