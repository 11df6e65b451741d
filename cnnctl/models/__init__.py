"""Architectures. Each module registers its family with :mod:`cnnctl.registry` when imported.

Modules must not import torch at import time (``cnnctl list`` stays instant); builders import it when called.
"""

from __future__ import annotations

from typing import Any

from cnnctl.registry import check_arch_args, get_model_spec


def build_model(name: str, *, num_classes: int, in_channels: int, **arch_args: Any) -> Any:
    """Build a registered architecture by name."""
    spec = get_model_spec(name)
    check_arch_args(spec, arch_args)
    args = {**spec.default_args, **arch_args}
    return spec.builder(num_classes=num_classes, in_channels=in_channels, **args)
