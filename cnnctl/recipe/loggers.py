"""Experiment trackers (``--logger NAME[,NAME]``) by name: one entry each (description, the pip extra and module it
needs). ``--logger``'s choices, its checks and the missing-extra message read these entries; the engine keeps the
callback that does the logging (cnnctl/engine/loggers.py, ``register_logger`` adds both at once).

A logger built on an optional library names the pip extra that installs it; a missing one is one line before any
work starts. Importing this module never imports torch or the tracking libraries.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from cnnctl.errors import UsageError
from cnnctl.registry import suggest


@dataclass(frozen=True)
class LoggerInfo:
    """``extra`` is the pip extra (``cnnctl[extra]``) and ``requires`` the importable module it needs."""

    name: str
    description: str
    extra: str | None = None
    requires: str | None = None

    def check_installed(self) -> None:
        """Raise the one-line error that names the pip command when the library this logger needs is missing."""
        if self.requires is None or importlib.util.find_spec(self.requires) is not None:
            return
        package = f"cnnctl[{self.extra}]" if self.extra else self.requires
        raise UsageError(f"--logger {self.name} needs {self.requires}, which is not installed",
                         hint=f"pip install '{package}'")


_LOGGERS: dict[str, LoggerInfo] = {}


def add_logger(info: LoggerInfo) -> LoggerInfo:
    if info.name in _LOGGERS:
        raise ValueError(f"logger {info.name!r} registered twice")
    _LOGGERS[info.name] = info
    return info


def loggers() -> dict[str, LoggerInfo]:
    """Every registered logger."""
    return dict(_LOGGERS)


def logger_names() -> list[str]:
    return list(_LOGGERS)


def get_logger(name: str) -> LoggerInfo:
    if name not in _LOGGERS:
        raise suggest(name, list(_LOGGERS), "logger")
    return _LOGGERS[name]


def split_names(value: str | None) -> list[str]:
    """``"tensorboard, mlflow"`` → ``["tensorboard", "mlflow"]`` (empty parts and repeats dropped)."""
    names: list[str] = []
    for part in (value or "").split(","):
        part = part.strip()
        if part and part not in names:
            names.append(part)
    return names


add_logger(LoggerInfo("tensorboard", "TensorBoard event files in RUN/tensorboard/ (tensorboard --logdir runs)",
                      extra="tensorboard", requires="tensorboard"))
add_logger(LoggerInfo("mlflow", "an MLflow run: params, metrics per epoch, the run folder as artifacts (local store "
                      "OUT/mlflow.db, or $MLFLOW_TRACKING_URI)", extra="mlflow", requires="mlflow"))
