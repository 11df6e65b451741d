"""Experiment trackers (``--logger NAME[,NAME]``): one registry entry per logger, declared in the file that
implements it with :func:`register_logger`; the entry builds the :class:`~cnnctl.engine.callbacks.Callback` that
does the logging. The option's choices, its checks and the missing-extra message all read this registry.

A logger built on an optional library names the pip extra that installs it; a missing one is one line before any
work starts. Importing this module never imports torch or the tracking libraries.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError
from cnnctl.registry import suggest

if TYPE_CHECKING:
    from cnnctl.config import TrainConfig
    from cnnctl.engine.callbacks import Callback

# the modules that hold the built-in loggers (each registers itself when imported)
_BUILTIN_MODULES = ("cnnctl.engine.callbacks.tensorboard", "cnnctl.engine.callbacks.mlflow")


@dataclass(frozen=True)
class LoggerSpec:
    """``builder(config)`` returns the logger's callback. ``extra`` is the pip extra (``cnnctl[extra]``) and
    ``requires`` the importable module it needs."""

    name: str
    description: str
    builder: Callable[[TrainConfig], Callback]
    extra: str | None = None
    requires: str | None = None

    def check_installed(self) -> None:
        """Raise the one-line error that names the pip command when the library this logger needs is missing."""
        if self.requires is None or importlib.util.find_spec(self.requires) is not None:
            return
        package = f"cnnctl[{self.extra}]" if self.extra else self.requires
        raise UsageError(f"--logger {self.name} needs {self.requires}, which is not installed",
                         hint=f"pip install '{package}'")


_LOGGERS: dict[str, LoggerSpec] = {}
_loaded = False


def register_logger(name: str, *, description: str, extra: str | None = None,
                    requires: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(config) -> Callback`` as ``--logger name``."""

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _LOGGERS:
            raise ValueError(f"logger {name!r} registered twice")
        _LOGGERS[name] = LoggerSpec(name, description, builder, extra, requires)
        return builder

    return decorate


def loggers() -> dict[str, LoggerSpec]:
    """Every registered logger, the built-in ones imported first."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
    return dict(_LOGGERS)


def logger_names() -> list[str]:
    return list(loggers())


def split_names(value: str | None) -> list[str]:
    """``"tensorboard, mlflow"`` → ``["tensorboard", "mlflow"]`` (empty parts and repeats dropped)."""
    names: list[str] = []
    for part in (value or "").split(","):
        part = part.strip()
        if part and part not in names:
            names.append(part)
    return names


def build_loggers(config: TrainConfig) -> list[Callback]:
    """The callbacks of ``config.logger``; an unknown name or a missing library is a one-line error here, before
    any work."""
    known = loggers()
    specs = []
    for name in split_names(config.logger):
        if name not in known:
            raise suggest(name, list(known), "logger")
        specs.append(known[name])
    for spec in specs:
        spec.check_installed()
    return [spec.builder(config) for spec in specs]


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
