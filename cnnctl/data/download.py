"""Fetch dataset files from mirrors, resume what was interrupted, and never keep anything that fails its checksum.

Only the standard library (and rich, for the progress bar) is used: downloading must work before torch is imported.
Files arrive as ``<name>.part`` and get their final name only once a checksum matched, so a present file is a
verified file. A small ``.verified.json`` marker remembers size and mtime of verified files so later runs need
not hash them again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cnnctl.errors import CnnctlError, DataError, DownloadError
from cnnctl.fsutil import atomic_write_bytes

TIMEOUT_SECONDS: float = 30.0  # connect and per-read timeout; tests patch it
MIN_BYTES_PER_SECOND = 1024  # a transfer slower than this over TIMEOUT_SECONDS is given up (a trickling server)
CHUNK_BYTES = 1 << 20
USER_AGENT = "cnnctl (+https://github.com/; dataset download)"
MARKER_NAME = ".verified.json"
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class RemoteFile:
    """One published file and the checksums any copy of it must match (one match is enough)."""

    name: str                          # official file name, e.g. "train-images-idx3-ubyte.gz"
    content_sha256: str | None = None  # sha256 of the DECOMPRESSED content if name ends in .gz, else of the file
    content_md5: str | None = None     # md5 of the decompressed content (same rule)
    file_md5: str | None = None        # md5 of the file bytes exactly as published (also accepted)
    size: int | None = None            # published file size in bytes
    content_size: int | None = None    # size of the decompressed content of a .gz checked by content

    @property
    def max_bytes(self) -> int | None:
        """The most bytes a copy that can still verify may have. For a ``.gz`` mirrors may recompress, the
        largest gzip of ``content_size`` bytes (stored blocks add 5 bytes per 64 KiB, plus the header);
        otherwise the published size."""
        if self.name.endswith(".gz") and self.content_size is not None:
            return self.content_size + self.content_size // 1000 + 4096
        if self.name.endswith(".gz") and (self.content_sha256 or self.content_md5):
            return None  # a recompressed copy may be larger than the published one
        return self.size

    @property
    def has_checksum(self) -> bool:
        return bool(self.content_sha256 or self.content_md5 or self.file_md5)

    def fingerprint(self) -> str:
        """What the marker stores, so a changed checksum in the registry forces a re-hash."""
        return f"{self.content_sha256}:{self.content_md5}:{self.file_md5}"


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_root() -> Path:
    """``$CNNCTL_DATA`` if set, else ``${XDG_CACHE_HOME:-~/.cache}/cnnctl/data``: a cache, not the working dir."""
    explicit = os.environ.get("CNNCTL_DATA")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "cnnctl" / "data"


def resolve_mirrors(official: Sequence[str], mirror: str | None) -> list[str]:
    """The user's mirror (argument, else ``$CNNCTL_MIRROR``) first, then the official ones; no duplicates."""
    chosen = mirror if mirror else os.environ.get("CNNCTL_MIRROR", "")
    ordered: list[str] = []
    for candidate in [chosen.strip() if chosen else "", *official]:
        if candidate and candidate not in ordered:
            ordered.append(candidate)
    return ordered


# --------------------------------------------------------------------------------------------------------------
# verification


class _Gunzip:
    """Streaming gunzip that follows concatenated members and skips zero padding between them, like ``gzip``."""

    def __init__(self) -> None:
        self._inflater: Any = zlib.decompressobj(wbits=31)
        self._pending = False  # output limit was hit: zlib may hold more output without further input

    def feed(self, data: bytes, sink: Callable[[bytes], None]) -> None:
        """Decompress ``data`` into ``sink`` in bounded pieces; raises ``zlib.error`` on a corrupt stream."""
        while data or self._pending:
            if self._inflater.eof:
                data = data.lstrip(b"\0")
                if not data:
                    return
                self._inflater = zlib.decompressobj(wbits=31)
            out = self._inflater.decompress(data, CHUNK_BYTES)
            sink(out)
            self._pending = len(out) == CHUNK_BYTES and not self._inflater.eof
            data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail

    @property
    def complete(self) -> bool:
        """False for a truncated stream (the last member's trailer was never reached)."""
        return bool(self._inflater.eof) and not self._pending


def _matches(hasher: Any, expected: str | None) -> bool:
    return hasher is not None and expected is not None and hasher.hexdigest() == expected.strip().lower()


def _hash_stream(stream: BinaryIO, remote: RemoteFile) -> bool:
    """One pass over the raw bytes: file md5 on them, content hashes on the gunzipped (or raw) bytes."""
    file_md5 = hashlib.md5(usedforsecurity=False) if remote.file_md5 else None
    content_sha = hashlib.sha256() if remote.content_sha256 else None
    content_md5 = hashlib.md5(usedforsecurity=False) if remote.content_md5 else None
    content_hashers = [h for h in (content_sha, content_md5) if h is not None]
    gunzip = _Gunzip() if (content_hashers and remote.name.endswith(".gz")) else None
    content_ok = bool(content_hashers)  # False once the gzip stream turns out corrupt; file_md5 may still match

    def feed_content(data: bytes) -> None:
        for hasher in content_hashers:
            hasher.update(data)

    while chunk := stream.read(CHUNK_BYTES):
        if file_md5 is not None:
            file_md5.update(chunk)
        if not content_ok:
            continue
        if gunzip is None:
            feed_content(chunk)
            continue
        try:
            gunzip.feed(chunk, feed_content)
        except zlib.error:
            content_ok = False
    if gunzip is not None and not gunzip.complete:
        content_ok = False  # truncated

    if _matches(file_md5, remote.file_md5):
        return True
    return content_ok and (_matches(content_sha, remote.content_sha256) or _matches(content_md5, remote.content_md5))


def verify_file(path: Path, remote: RemoteFile) -> bool:
    """True if any checksum of ``remote`` matches ``path``; content checksums see through gzip recompression.

    Mirrors often recompress ``.gz`` files (different header, level, mtime), so the decompressed content is what
    really identifies them. A corrupt or truncated gzip gives False, never an exception. A file with no checksum
    at all passes if its size matches (or no size is known either).
    """
    try:
        if not remote.has_checksum:
            return remote.size is None or Path(path).stat().st_size == remote.size
        with open(path, "rb") as stream:
            return _hash_stream(stream, remote)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------------
# the "already verified" marker


def _stat_entry(path: Path, remote: RemoteFile) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "checksum": remote.fingerprint()}


def _read_marker(directory: Path) -> dict[str, Any]:
    """A missing or damaged marker only costs a re-hash, so any problem reads as empty."""
    try:
        data = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return dict(files) if isinstance(files, dict) else {}


def _write_marker(directory: Path, files: dict[str, Any]) -> None:
    """Best effort: a read-only data folder still works, it just gets re-hashed next time."""
    payload = json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True).encode("utf-8")
    with contextlib.suppress(OSError, CnnctlError):
        atomic_write_bytes(directory / MARKER_NAME, payload)


def _trusted(marker: dict[str, Any], path: Path, remote: RemoteFile) -> bool:
    try:
        return marker.get(remote.name) == _stat_entry(path, remote)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------------
# progress display


class _Meter:
    """A rich progress bar on stderr for one transfer, or nothing (the caller logs a plain line instead)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._progress: Any = None
        self._task: Any = None

    def start(self, label: str, total: int | None, completed: int) -> None:
        if not self.show:
            return
        try:
            from rich import progress as rp
            from rich.console import Console
        except ImportError:  # pragma: no cover - rich is a dependency; degrade to plain lines anyway
            self.show = False
            return
        self._progress = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
                                     rp.TransferSpeedColumn(), rp.TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=True)  # the "verified" line stays
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, completed=completed)

    def advance(self, count: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, count)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# --------------------------------------------------------------------------------------------------------------
# transfers


class _MirrorFailure(Exception):
    """This mirror did not deliver the file; the reason is logged and the next mirror is tried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = " ".join(reason.split())


def _describe(error: BaseException) -> str:
    """A short, one-line reason for a failed request."""
    if isinstance(error, urllib.error.HTTPError):
        if 300 <= error.code < 400:
            return f"too many redirects (redirect loop?), last HTTP {error.code}"
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, TimeoutError):
        return f"timed out after {TIMEOUT_SECONDS:g} s"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, TimeoutError):
            return f"timed out after {TIMEOUT_SECONDS:g} s"
        if isinstance(reason, OSError) and reason.strerror:
            return f"cannot connect: {reason.strerror}"
        return f"cannot connect: {reason}"
    if isinstance(error, http.client.HTTPException):
        return f"bad response from server ({type(error).__name__}: {error})"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def _write_failure(path: Path, error: OSError) -> CnnctlError:
    """Local disk problems are not a mirror's fault: stop instead of trying the next one."""
    if error.errno == errno.ENOSPC:
        return CnnctlError(f"no space left on device while writing {path}",
                           hint="free some disk space or set CNNCTL_DATA to another folder")
    return DataError(f"cannot write {path}: {error.strerror or error}",
                     hint="set CNNCTL_DATA or --root to a writable folder")


class _TooLarge(_MirrorFailure):
    """More bytes arrived than the file can have: what was received can never verify."""


def _copy_stream(source: BinaryIO, sink: BinaryIO, path: Path, meter: _Meter, *, limit: int | None = None,
                 watch_rate: bool = False) -> int:
    """Copy in chunks; read errors blame the mirror, write errors blame the disk. At most ``limit`` bytes are
    accepted; with ``watch_rate`` a transfer slower than ``MIN_BYTES_PER_SECOND`` over ``TIMEOUT_SECONDS`` is
    given up (the timeout alone is per read, so a server sending a byte now and then would never time out)."""
    read = getattr(source, "read1", None) or source.read  # read1: what has arrived, not a full 1 MiB
    received = 0
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            chunk = read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise _MirrorFailure(f"transfer interrupted after {received:,} bytes: {_describe(error)}") from error
        if not chunk:
            return received
        if limit is not None and received + len(chunk) > limit:
            raise _TooLarge(f"sent more than the {limit:,} bytes this file can have; discarded what arrived")
        try:
            sink.write(chunk)
        except OSError as error:
            raise _write_failure(path, error) from error
        received += len(chunk)
        meter.advance(len(chunk))
        if watch_rate:
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start
            if elapsed >= TIMEOUT_SECONDS:
                if window_bytes < MIN_BYTES_PER_SECOND * elapsed:
                    raise _MirrorFailure(f"too slow: {window_bytes:,} bytes in the last {elapsed:.1f} s (less "
                                         f"than {MIN_BYTES_PER_SECOND:,} bytes/s), after {received:,} bytes")
                window_start, window_bytes = time.monotonic(), 0


def _open_part(part: Path, append: bool) -> BinaryIO:
    try:
        return open(part, "ab" if append else "wb")  # noqa: SIM115 - closed by the caller's with-block
    except OSError as error:
        raise _write_failure(part, error) from error


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


def _fetch_http(url: str, part: Path, remote: RemoteFile, meter: _Meter, log: Callable[[str], None]) -> int:
    """Download ``url`` into ``part``, resuming with a Range request; returns the offset it resumed from."""
    offset = part.stat().st_size if part.is_file() else 0
    limit = remote.max_bytes
    if limit is not None and offset > limit:  # can never verify: start again
        part.unlink(missing_ok=True)
        offset = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            return offset  # nothing after what we hold: the part may be complete; verification decides
        raise _MirrorFailure(_describe(error)) from error
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise _MirrorFailure(_describe(error)) from error
    log(f"downloading {url}" + (f" (resuming at {offset:,} bytes)" if offset else ""))

    with response:
        status = getattr(response, "status", None) or 200
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        total: int | None = None
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _MirrorFailure(f"server answered the range request with the wrong part "
                                     f"({response.headers.get('Content-Range')!r}); discarded the partial file")
            total = int(match.group(3)) if match.group(3) != "*" else None
        else:
            if offset:
                log(f"{url} ignored the range request; starting again from the beginning")
            offset = 0
            total = length
        if total is None and length is not None:
            total = offset + length
        if limit is not None and total is not None and total > limit:
            raise _MirrorFailure(f"the server announces {total:,} bytes, more than the {limit:,} this file can have")
        with _open_part(part, append=offset > 0) as sink:
            meter.start(remote.name, total if total is not None else remote.size, offset)
            try:
                received = _copy_stream(response, sink, part, meter,
                                        limit=None if limit is None else limit - offset, watch_rate=True)
            except _TooLarge:
                sink.close()
                part.unlink(missing_ok=True)
                raise
            finally:
                meter.stop()
        if length is not None and received < length:
            raise _MirrorFailure(f"connection closed after {received:,} of {length:,} bytes")
    return offset


def _local_source(mirror: str, dataset: str, name: str) -> Path:
    """A directory mirror (plain path or file:// URL) holds ``<dir>/<name>`` or ``<dir>/<dataset>/<name>``."""
    if mirror.lower().startswith("file:"):
        parsed = urllib.parse.urlparse(mirror)
        base = Path(urllib.request.url2pathname(parsed.path))
    else:
        base = Path(mirror).expanduser()
    if not base.is_dir():
        raise _MirrorFailure("no such directory")
    for candidate in (base / name, base / dataset / name):
        if candidate.is_file():
            return candidate
    raise _MirrorFailure(f"{name} is not there (nor in {dataset}/)")


def _copy_local(source: Path, part: Path, remote: RemoteFile, meter: _Meter, log: Callable[[str], None]) -> None:
    """Copy through the same ``.part`` route as a download so a half-copied file never looks complete."""
    log(f"copying {source}")
    try:
        handle = open(source, "rb")  # noqa: SIM115 - closed by the with-block below
    except OSError as error:
        raise _MirrorFailure(f"cannot read {source}: {error.strerror or error}") from error
    with handle, _open_part(part, append=False) as sink:
        meter.start(remote.name, os.fstat(handle.fileno()).st_size, 0)
        try:
            _copy_stream(handle, sink, part, meter, limit=remote.max_bytes)
        except _TooLarge:
            sink.close()
            part.unlink(missing_ok=True)
            raise
        finally:
            meter.stop()


def _is_url(mirror: str) -> bool:
    return urllib.parse.urlparse(mirror).scheme.lower() in ("http", "https", "ftp")


def _file_url(mirror: str, name: str) -> str:
    return mirror.rstrip("/") + "/" + urllib.parse.quote(name)


def _promote(part: Path, path: Path) -> None:
    """Give a verified part its final name, durably."""
    try:
        with open(part, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(part, path)
    except OSError as error:
        raise _write_failure(path, error) from error
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _from_mirror(mirror: str, dataset: str, remote: RemoteFile, part: Path, meter: _Meter,
                 log: Callable[[str], None]) -> None:
    """Fetch one file from one mirror into ``part`` and verify it; raise ``_MirrorFailure`` otherwise."""
    if not _is_url(mirror):
        _copy_local(_local_source(mirror, dataset, remote.name), part, remote, meter, log)
        if verify_file(part, remote):
            return
        part.unlink(missing_ok=True)
        raise _MirrorFailure("checksum mismatch")

    url = _file_url(mirror, remote.name)
    resumed_from = _fetch_http(url, part, remote, meter, log)
    if verify_file(part, remote):
        return
    if resumed_from:
        # The kept part may come from another mirror's differently compressed copy: start over once.
        log(f"{remote.name}: the resumed download does not match its checksum; downloading it again from the start")
        part.unlink(missing_ok=True)
        _fetch_http(url, part, remote, meter, log)
        if verify_file(part, remote):
            return
    part.unlink(missing_ok=True)
    raise _MirrorFailure("checksum mismatch")


def _download(dataset: str, remote: RemoteFile, directory: Path, mirrors: Sequence[str], show: bool,
              log: Callable[[str], None]) -> None:
    """Try every mirror in order; the first verified copy gets the final name."""
    path = directory / remote.name
    part = directory / (remote.name + ".part")
    tried: list[str] = []
    for mirror in mirrors:
        where = _file_url(mirror, remote.name) if _is_url(mirror) else mirror
        started = time.monotonic()
        try:
            _from_mirror(mirror, dataset, remote, part, _Meter(show), log)
        except _MirrorFailure as failure:
            # Reported once: in the final error if every mirror fails, else in the success line below.
            tried.append(f"{where} ({failure.reason})")
            continue
        _promote(part, path)
        size = path.stat().st_size
        fallback = f" after {len(tried)} failed mirror(s): {'; '.join(tried)}" if tried else ""
        log(f"{remote.name}: verified ({size:,} bytes in {time.monotonic() - started:.1f} s){fallback}")
        return
    attempts = "; ".join(tried) if tried else "no mirror is known for it"
    raise DownloadError(f"could not download {remote.name} for {dataset}: tried {attempts}",
                        hint=f"use --mirror DIR_OR_URL or CNNCTL_MIRROR, or copy the files into {directory}")


@contextlib.contextmanager
def _locked(directory: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Serialise downloads into one folder (e.g. several training processes starting at once); best effort."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        handle = open(directory / LOCK_NAME, "a+b")  # noqa: SIM115 - closed in finally
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"waiting for another cnnctl process downloading into {directory}")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_failure(directory, error) from error


# --------------------------------------------------------------------------------------------------------------
# public entry points


def is_present(dataset: str, files: Sequence[RemoteFile], root: Path | None = None) -> bool:
    """All files exist under their final names (which only verified files get); no hashing."""
    directory = (Path(root).expanduser() if root else default_root()) / dataset
    return all((directory / remote.name).is_file() for remote in files)


def _check_files(dataset: str, files: Sequence[RemoteFile], directory: Path, log: Callable[[str], None]) -> Path:
    """``--check``: re-hash everything, report each file, download nothing."""
    if not directory.is_dir():
        raise DataError(f"{dataset} is not downloaded: {directory} does not exist",
                        hint=f"run `cnnctl download {dataset}`")
    marker = _read_marker(directory)
    problems: list[str] = []
    for remote in files:
        path = directory / remote.name
        if not path.is_file():
            log(f"{dataset}/{remote.name}: missing")
            problems.append(f"{remote.name} is missing")
            marker.pop(remote.name, None)
        elif verify_file(path, remote):
            log(f"{dataset}/{remote.name}: ok")
            marker[remote.name] = _stat_entry(path, remote)
        else:
            log(f"{dataset}/{remote.name}: checksum mismatch")
            problems.append(f"{remote.name} does not match its checksum")
            marker.pop(remote.name, None)
    _write_marker(directory, marker)
    if problems:
        raise DataError(f"{dataset} in {directory}: " + "; ".join(problems),
                        hint=f"run `cnnctl download {dataset}` to fetch it again")
    return directory


def ensure_files(dataset: str, files: Sequence[RemoteFile], official_mirrors: Sequence[str], *,
                 root: Path | None = None, mirror: str | None = None, check: bool = False,
                 log: Callable[[str], None] = _stderr_log, progress: bool | None = None,
                 report_present: bool = True) -> Path:
    """Make sure every file of ``dataset`` is present and verified, downloading what is missing.

    Returns ``(root or default_root()) / dataset``. With ``check`` nothing is downloaded: every file is re-hashed
    and a ``DataError`` names what is missing or corrupt. Without it, a file whose size and mtime match the
    marker is trusted as is; anything else is hashed, and fetched again if it does not verify.
    """
    directory = (Path(root).expanduser() if root else default_root()) / dataset
    if check:
        return _check_files(dataset, files, directory, log)
    _make_directory(directory)

    marker = _read_marker(directory)
    changed = False
    needed: list[RemoteFile] = []
    for remote in files:
        path = directory / remote.name
        if path.is_file():
            if _trusted(marker, path, remote):
                if report_present:
                    log(f"{dataset}/{remote.name}: already there")
                continue
            if verify_file(path, remote):
                if report_present:
                    log(f"{dataset}/{remote.name}: already there (verified)")
                marker[remote.name] = _stat_entry(path, remote)
                changed = True
                continue
            log(f"{path} does not match its checksum; fetching it again")
        needed.append(remote)
    if changed:
        _write_marker(directory, marker)
    if not needed:
        return directory

    mirrors = resolve_mirrors(official_mirrors, mirror)
    show = sys.stderr.isatty() if progress is None else progress
    with _locked(directory, log):
        for remote in needed:
            path = directory / remote.name
            marker = _read_marker(directory)  # another process may have finished it while we waited
            if path.is_file() and _trusted(marker, path, remote):
                if report_present:
                    log(f"{dataset}/{remote.name}: already there")
                continue
            _download(dataset, remote, directory, mirrors, show, log)
            marker[remote.name] = _stat_entry(path, remote)
            _write_marker(directory, marker)
    return directory


def _named_under(folder: Path, name: str, max_depth: int = 4) -> list[Path]:
    """Files called ``name`` in ``folder`` and its sub-folders (shallowest first, hidden folders skipped)."""
    found: list[Path] = []
    base_depth = len(folder.parts)
    for current, dirs, files in os.walk(folder):
        depth = len(Path(current).parts) - base_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        if name in files:
            found.append(Path(current) / name)
    return sorted(found, key=lambda path: (len(path.parts), str(path)))


def import_files(dataset: str, files: Sequence[RemoteFile], source: Path, *, root: Path | None = None,
                 log: Callable[[str], None] = _stderr_log) -> Path:
    """``cnnctl download NAME --from PATH``: take the dataset's files from what the user already has, offline.

    ``source`` is one file (under any name; it is recognised by its checksum) or a folder searched for the
    official file names (e.g. torchvision's ``data/`` folder). Every copy is verified; nothing that fails its
    checksum is kept, and a ``DataError`` names the files that could not be found.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"{source} does not exist", hint="--from takes the downloaded archive/files or their folder")
    directory = (Path(root).expanduser() if root else default_root()) / dataset
    _make_directory(directory)
    missing: list[str] = []
    with _locked(directory, log):
        marker = _read_marker(directory)
        for remote in files:
            path = directory / remote.name
            if path.is_file() and (_trusted(marker, path, remote) or verify_file(path, remote)):
                log(f"{dataset}/{remote.name}: already there")
                marker[remote.name] = _stat_entry(path, remote)
                continue
            candidates = [source] if source.is_file() else _named_under(source, remote.name)
            part = directory / (remote.name + ".part")
            for candidate in candidates:
                if candidate.resolve() == path.resolve():
                    continue
                if not verify_file(candidate, remote):  # checked in place first: no copy of a wrong file
                    if not source.is_file():
                        log(f"{candidate} does not match the checksum of {remote.name}; skipped")
                    continue
                try:
                    _copy_local(candidate, part, remote, _Meter(False), log)
                except _MirrorFailure as failure:
                    log(f"{remote.name}: {failure.reason}")
                    continue
                if verify_file(part, remote):  # and the copy again: the disk may have failed us
                    _promote(part, path)
                    marker[remote.name] = _stat_entry(path, remote)
                    _write_marker(directory, marker)
                    log(f"{remote.name}: verified")
                    break
                part.unlink(missing_ok=True)
            else:
                missing.append(remote.name)
        _write_marker(directory, marker)
    if source.is_file() and len(missing) == len(files):
        raise DataError(f"{source} is none of {dataset}'s files: its checksum matches none of "
                        f"{', '.join(remote.name for remote in files)}",
                        hint="pass the official archive/files unchanged, or a folder holding them")
    if missing:
        where = "" if source.is_file() else f" in {source}"
        raise DataError(f"could not find {', '.join(missing)} with a matching checksum{where}",
                        hint=f"pass the folder that holds them, or copy them into {directory}")
    return directory
