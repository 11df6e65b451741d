"""Real servers for the scale-out tests, started on 127.0.0.1 for the test session and stopped after it.

- PostgreSQL (Debian's ``postgresql`` package, or any install whose ``initdb``/``postgres`` are on PATH or under
  /usr/lib/postgresql/*/bin): a throw-away cluster in a temporary folder, password (scram-sha-256) auth over TCP,
  on a free port. As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
- an ``mlflow server`` (MLflow's own, from the ``mlflow`` extra) with a SQLite backend and served artifacts.

``CNNCTL_TEST_POSTGRES_URL`` (a server URL whose user may CREATE DATABASE) and ``CNNCTL_TEST_MLFLOW_URI`` use servers
started elsewhere instead. A server that cannot start raises :class:`ServiceError` with the reason, and the test
that needs it fails (it is never skipped).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PG_USER = "cnnctl"
PG_PASSWORD = "s3cret-test"


class ServiceError(RuntimeError):
    """A server the tests need could not be started; the message says why and how to get it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen | None, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{what} exited with code {process.returncode} while starting: {tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s: {tail(log)}")


def tail(log: Path, lines: int = 8) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _prctl() -> object:
    """libc's prctl, looked up in this process (a child that dropped root may not read Python's own files)."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


PRCTL = _prctl()


def die_with_parent(sig: int) -> None:
    """In a child before exec (Linux): ``sig`` reaches it when the test process dies, even by kill -9, so a test
    run that is killed leaves no server behind."""
    if PRCTL is not None:
        PRCTL(1, int(sig))  # PR_SET_PDEATHSIG


# ------------------------------------------------------------------------------------------------ PostgreSQL
def postgres_bin(name: str) -> str:
    """``initdb``/``postgres``: on PATH, else Debian's /usr/lib/postgresql/VERSION/bin (not on PATH there)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    raise ServiceError(f"PostgreSQL's {name} is not installed (looked on PATH and in /usr/lib/postgresql/*/bin): "
                       "apt-get install postgresql, or set CNNCTL_TEST_POSTGRES_URL to a server's URL")


@dataclass
class Postgres:
    port: int
    admin_url: str  # the server's `postgres` database, as the cnnctl superuser
    process: subprocess.Popen | None = None
    folder: Path | None = None
    databases: list[str] = field(default_factory=list)

    def url(self, database: str, *, password: str = PG_PASSWORD, user: str = PG_USER) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.admin_url).set(database=database, password=password, username=user) \
            .render_as_string(hide_password=False)

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, signal.SIGINT)  # PostgreSQL's "fast shutdown"


def _as_postgres_user() -> tuple[int, int] | None:
    """(uid, gid) of the ``postgres`` user when this process is root (PostgreSQL will not run as root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root, and there is no `postgres` user to run PostgreSQL as (Debian's "
                           "postgresql package creates it)") from None
    return entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A PostgreSQL server for the session (or the one CNNCTL_TEST_POSTGRES_URL names)."""
    given = os.environ.get("CNNCTL_TEST_POSTGRES_URL")
    if given:
        from sqlalchemy.engine import make_url

        url = make_url(given)
        yield Postgres(url.port or 5432, given)
        return
    initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
    owner = _as_postgres_user()
    # as root, in /tmp: the postgres user must reach the folder (a root-only $TMPDIR would hide it)
    folder = Path(tempfile.mkdtemp(prefix="cnnctl-pg-", dir="/tmp" if owner is not None else None))
    data, log = folder / "data", folder / "postgres.log"
    (folder / "pwfile").write_text(PG_PASSWORD + "\n")
    if owner is not None:
        for path in (folder, folder / "pwfile"):
            os.chown(path, *owner)

    def drop_privileges() -> None:
        os.setsid()
        if owner is not None:
            os.setgid(owner[1])
            os.setuid(owner[0])
        die_with_parent(signal.SIGINT)  # PostgreSQL's fast shutdown; after setuid, which clears it

    port = free_port()
    process = None
    try:
        made = subprocess.run([initdb, "-D", str(data), "-U", PG_USER, f"--pwfile={folder / 'pwfile'}",
                               "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                              capture_output=True, text=True, preexec_fn=drop_privileges, timeout=120)
        if made.returncode:
            raise ServiceError(f"initdb failed ({made.returncode}): {(made.stderr or made.stdout).strip()[-800:]}")
        with open(log, "w") as handle:
            if owner is not None:
                os.chown(log, *owner)
            process = subprocess.Popen(
                [postgres, "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(folder),
                 "-c", "fsync=off", "-c", "max_connections=60", "-c", "shared_buffers=16MB"],
                stdout=handle, stderr=subprocess.STDOUT, preexec_fn=drop_privileges)
        wait_for_port(port, process, "postgres", log, timeout=60)
        server = Postgres(port, f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/postgres", process, folder)
        _wait_until_accepting(server, log)
        yield server
    finally:
        if process is not None:
            stop(process, signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_accepting(server: Postgres, log: Path, timeout: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(server.admin_url, connect_timeout=3).close()
            return
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                raise ServiceError(f"postgres on port {server.port} does not accept connections: {error} "
                                   f"{tail(log)}") from error
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------------ MLflow
@dataclass
class Mlflow:
    uri: str
    process: subprocess.Popen | None = None
    folder: Path | None = None

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, signal.SIGKILL)  # a throw-away server: nothing to shut down cleanly


@contextlib.contextmanager
def mlflow_server(*, use_given: bool = True) -> Iterator[Mlflow]:
    """``mlflow server`` on 127.0.0.1 (SQLite backend, artifacts served by the server), or the one
    CNNCTL_TEST_MLFLOW_URI names when ``use_given``."""
    given = os.environ.get("CNNCTL_TEST_MLFLOW_URI")
    if given and use_given:
        yield Mlflow(given)
        return
    folder = Path(tempfile.mkdtemp(prefix="cnnctl-mlflow-"))
    port = free_port()
    log = folder / "mlflow.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]
    process = None
    try:
        with open(log, "w") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=folder, env=env,
                                       start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGKILL))
        wait_for_port(port, process, "mlflow server", log, timeout=90)
        uri = f"http://127.0.0.1:{port}"
        _wait_healthy(uri, process, log)
        yield Mlflow(uri, process, folder)
    finally:
        if process is not None:
            stop(process, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_healthy(uri: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise ServiceError(f"mlflow server at {uri} is not healthy: {tail(log)}")
        time.sleep(0.2)


# ------------------------------------------------------------------------------------ a server that goes away
class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; :meth:`close` makes the server behind it "go away"
    (open connections are cut, new ones refused) without stopping the server itself."""

    def __init__(self, target: int):
        import threading

        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.connections: list[socket.socket] = []
        self.closed = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.closed:
                    client.close()
                    upstream.close()
                    return
                self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.listener.close()
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
