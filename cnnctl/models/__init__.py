"""Architectures. Each module registers its family with :mod:`cnnctl.registry` when imported.

Modules must not import torch at import time (``cnnctl list`` stays instant); builders import it when called.
"""

from __future__ import annotations

from typing import Any

from cnnctl.errors import UsageError
from cnnctl.registry import get_model_spec, suggest


def build_model(name: str, *, num_classes: int, in_channels: int, **arch_args: Any) -> Any:
    """Build a registered architecture by name."""
    spec = get_model_spec(name)
    check_arch_args(spec, arch_args)
    args = {**spec.default_args, **arch_args}
    return spec.builder(num_classes=num_classes, in_channels=in_channels, **args)


def arch_options(spec: Any) -> set[str]:
    """The builder arguments an architecture accepts besides ``num_classes``/``in_channels``: its builder's
    named parameters, plus ``default_args`` for builders that pass options through (the torchvision zoo)."""
    import inspect

    named = {
        parameter.name for parameter in inspect.signature(spec.builder).parameters.values()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    return (named | set(spec.default_args)) - {"num_classes", "in_channels"}


def check_arch_args(spec: Any, arch_args: dict[str, Any]) -> None:
    """Refuse options the architecture does not have (``--dropout`` on a head without dropout) or out of range."""
    accepted = arch_options(spec)
    for key, value in arch_args.items():
        if key not in accepted:
            if key == "dropout":
                raise UsageError(f"{spec.name} has no dropout before its classifier, so --dropout cannot be set",
                                 hint="leave --dropout out, or pick an architecture whose head has dropout")
            raise suggest(key, sorted(accepted) or ["(none)"], f"option for {spec.name}:")
        if key == "dropout" and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise UsageError(f"--dropout must be in [0, 1), got {value}")
