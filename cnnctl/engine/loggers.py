"""The callbacks of the experiment trackers (``--logger NAME[,NAME]``): each entry of
:mod:`cnnctl.recipe.loggers` has a builder here, ``builder(config) -> Callback``, declared in the file that
implements it. :func:`register_logger` declares a new logger in one go (its entry and its builder).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cnnctl.recipe.loggers import LoggerInfo, add_logger, get_logger, split_names

if TYPE_CHECKING:
    from cnnctl.engine.callbacks import Callback
    from cnnctl.recipe.config import TrainConfig

# the modules that hold the built-in loggers' builders (each declares its own when imported)
_BUILTIN_MODULES = ("cnnctl.engine.callbacks.tensorboard", "cnnctl.engine.callbacks.mlflow")
_BUILDERS: dict[str, Callable[..., Any]] = {}
_loaded = False


def logger_builder(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``builder(config) -> Callback`` builds the logger of the entry ``name``."""

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        _BUILDERS[name] = builder
        return builder

    return decorate


def register_logger(name: str, *, description: str, extra: str | None = None,
                    requires: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(config) -> Callback`` as ``--logger name`` (its entry and its builder)."""

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        add_logger(LoggerInfo(name, description, extra, requires))
        return logger_builder(name)(builder)

    return decorate


def builders() -> dict[str, Callable[..., Any]]:
    """Every logger's builder, the built-in ones imported first."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
    return dict(_BUILDERS)


def build_loggers(config: TrainConfig) -> list[Callback]:
    """The callbacks of ``config.logger``; an unknown name or a missing library is a one-line error here, before
    any work."""
    entries = [get_logger(name) for name in split_names(config.logger)]
    for entry in entries:
        entry.check_installed()
    known = builders() if entries else {}
    return [known[entry.name](config) for entry in entries]


def run_params(config: TrainConfig) -> dict[str, str | int | float | bool]:
    """The resolved configuration as flat hyper-parameters for a tracker: ``arch_args`` as ``arch_args.NAME``,
    lists as text, unset options left out."""
    params: dict[str, str | int | float | bool] = {}
    for key, value in config.to_dict().items():
        items = ({f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}).items()
        for name, item in items:
            if item is None:
                continue
            params[name] = item if isinstance(item, (str, int, float, bool)) else str(item)
    return params
