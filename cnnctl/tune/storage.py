"""Where a study lives: Optuna's RDBStorage over any SQLAlchemy URL (SQLite by default, PostgreSQL/MySQL to share
one study between machines). Connection problems are one line, said before any trial starts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cnnctl.errors import UsageError

DEFAULT_DB = "optuna.db"
# Each running trial writes a heartbeat; a trial whose process died (kill -9, a lost machine) has none for
# GRACE_S and is marked failed by the next process that starts a trial, so its slot in the budget is run again.
HEARTBEAT_S = 10
GRACE_S = 60
GRACE_ENV = "CNNCTL_TUNE_GRACE_S"  # a shorter (or longer) grace period, in seconds
SCHEMA_RACE_ATTEMPTS = 5
SQLITE_BUSY_TIMEOUT_S = 120  # several processes write one SQLite file: wait for the lock rather than fail


def default_url(tune_dir: Path) -> str:
    return f"sqlite:///{(tune_dir / DEFAULT_DB).resolve()}"


def shown_url(url: str) -> str:
    """The URL without its password (for messages, tune.json and JSON output)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is reported by open_storage
        return url


def with_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed: psycopg (3, which ``cnnctl[tune]`` brings
    and SQLAlchemy 2.1 picks by default) or psycopg2 (SQLAlchemy 2.0's default). Any other URL as given."""
    import importlib.util

    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - open_storage says what is wrong with it
        return url
    if parsed.drivername != "postgresql":
        return url
    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return parsed.set(drivername=driver).render_as_string(hide_password=False)
    return url


def open_storage(url: str) -> Any:
    """An ``optuna.storages.RDBStorage`` on ``url`` with the study tables created, or one line saying why not."""
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    where = f"--storage {shown_url(url)}"
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"{where}: not a database URL",
                         hint="e.g. sqlite:///runs/study.db or postgresql://user@host/dbname") from None
    engine_kwargs: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        if parsed.database and parsed.database != ":memory:":
            _prepare_sqlite_file(Path(parsed.database), where)
    else:
        engine_kwargs["pool_pre_ping"] = True  # a database restarted under a long search: reconnect
        if backend in ("postgresql", "mysql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        for attempt in range(SCHEMA_RACE_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    grace = grace_period()
                    return optuna.storages.RDBStorage(with_driver(url), engine_kwargs=engine_kwargs,
                                                      heartbeat_interval=min(HEARTBEAT_S, max(1, grace // 3)),
                                                      grace_period=grace)
            except sqlalchemy.exc.SQLAlchemyError as error:
                # Processes that open a new database at the same moment all create its tables: the losers see
                # "already exists" (or a duplicate version row) and find the tables there when they try again.
                text = str(error).lower()
                if attempt + 1 == SCHEMA_RACE_ATTEMPTS or not any(
                        sign in text for sign in ("already exists", "unique constraint", "duplicate")):
                    raise
                time.sleep(0.5 + random.random())
        raise AssertionError("unreachable")
    except sqlalchemy.exc.NoSuchModuleError:
        import difflib

        kind = parsed.drivername.split("+")[0]
        known = ["sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql"]
        close = difflib.get_close_matches(kind, known, n=1)
        raise UsageError(f"{where}: {kind}:// is not a database SQLAlchemy knows"
                         + (f" (did you mean {close[0]}://?)" if close else ""),
                         hint="e.g. sqlite:///runs/study.db or postgresql://user@host/dbname") from None
    except ImportError as error:
        cause: BaseException | None = error
        while cause is not None and not getattr(cause, "name", None):  # Optuna wraps the driver's ImportError
            cause = cause.__cause__ or cause.__context__
        driver = getattr(cause, "name", None) or str(error).split(":")[-1].strip()
        hint = {"psycopg": "pip install 'cnnctl[tune]' (it brings psycopg)",
                "psycopg2": "pip install psycopg2-binary"}.get(str(driver).split(".")[0],
                                                                "e.g. pymysql for mysql+pymysql://")
        raise UsageError(f"{where}: the database driver is not installed ({driver})", hint=hint) from None
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = " ".join(str(getattr(error, "orig", None) or error).split())
        raise UsageError(f"{where}: cannot connect ({reason[:300]})",
                         hint="check the host, port, database name and credentials") from None


def grace_period() -> int:
    """Seconds without a heartbeat after which a running trial counts as lost: ``$CNNCTL_TUNE_GRACE_S``, else 60.
    The heartbeat comes every third of it (at most every 10 s)."""
    text = os.environ.get(GRACE_ENV)
    if not text:
        return GRACE_S
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise UsageError(f"{GRACE_ENV}={text}: the grace period is a whole number of seconds, at least 2")
    return value


@contextlib.contextmanager
def server_lock(url: str, name: str) -> Iterator[Callable[[], None]]:
    """An exclusive lock that every process on every machine sharing the database ``url`` sees (PostgreSQL's
    advisory lock, held by this connection's session, so it goes with a process that dies): counting the budget
    and starting a trial are one step across machines too. Yields ``release``. On SQLite (one machine) the
    search folder's lock file does this, and nothing is locked here."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    if make_url(url).get_backend_name() != "postgresql":
        yield lambda: None
        return
    key = int.from_bytes(hashlib.sha256(f"cnnctl tune {name}".encode()).digest()[:8], "big", signed=True)
    engine = create_engine(with_driver(url), poolclass=NullPool, connect_args={"connect_timeout": 10})
    connection = engine.connect()
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            with contextlib.suppress(Exception):  # a server gone away has released it already
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()

    try:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        yield release
    finally:
        release()
        connection.close()
        engine.dispose()


def _prepare_sqlite_file(path: Path, where: str) -> None:
    """Write-ahead logging, so that readers (the table, another worker) do not block the trial that writes. The
    mode is kept in the file. A file in a folder that does not exist is refused here, in one line."""
    import sqlite3

    if not path.parent.is_dir():
        raise UsageError(f"{where}: the folder {path.parent} does not exist", hint="create it, or pick another path")
    try:
        connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise UsageError(f"{where}: cannot open it as an SQLite database ({error})") from None
