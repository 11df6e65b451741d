"""The one error type users see: a message saying what was wrong and what to do."""

from __future__ import annotations


class CnnctlError(Exception):
    """A user-facing failure. The CLI prints ``str(error)`` as one line and exits with ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(message if not hint else f"{message} — {hint}")


class UsageError(CnnctlError):
    """Bad options or names: exit code 2, like a command-line parse error."""

    exit_code = 2


class DataError(CnnctlError):
    """A dataset file that is missing, corrupt or inconsistent."""


class CheckpointError(CnnctlError):
    """A checkpoint that cannot be read or does not match its architecture."""


class DownloadError(DataError):
    """Every mirror failed, or what arrived did not verify."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most ``limit`` characters (its type name if it has none):
    how a library's multi-line error is quoted inside one of cnnctl's one-line messages."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def require_packages(packages: tuple[str, ...], extra: str, what: str) -> None:
    """Fail early, in one line naming the extra to install, when an optional package is missing."""
    import importlib

    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CnnctlError(f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          "not installed", hint=f"pip install 'cnnctl[{extra}]'")
