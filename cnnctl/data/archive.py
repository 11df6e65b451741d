"""Extract downloaded archives without trusting them: no escaping paths, no links or devices, no bombs.

Everything lands in a temporary sibling folder first and is renamed into place only once extraction finished, so
a folder with the destination's name is always complete. The same explicit checks run on every Python version;
where ``tarfile`` has extraction filters (3.12+, 3.10.12+, 3.11.4+) the ``data`` filter is applied as well.
"""

from __future__ import annotations

import contextlib
import errno
import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from cnnctl.data.download import _locked
from cnnctl.errors import CnnctlError, DataError
from cnnctl.fsutil import atomic_write_text

COPY_CHUNK = 1 << 20
EXTRACTED_MARKER = ".cnnctl-extracted.json"
_FILTER_ERROR: type[Exception] | tuple[()] = getattr(tarfile, "FilterError", ())
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)
MAX_DEPTH = 64  # folders inside folders in one member's path; the datasets' archives use 2
MAX_NAME = 4096  # characters in one member's path


def _corrupt(archive: Path, detail: object = None) -> DataError:
    suffix = f" ({' '.join(str(detail).split())})" if detail else ""
    return DataError(f"{archive} is corrupt or truncated{suffix}", hint="delete it and download again")


def _shown(name: str) -> str:
    """Quote a member name for a one-line message; repr only when it holds control characters; long names are
    cut to their first 100 characters."""
    if len(name) > 100:
        name = name[:100] + "..."
    return f"'{name}'" if name.isprintable() else repr(name)


def _refuse(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"refusing to extract {archive}: member {_shown(member)} {why}",
                     hint="the archive is not what was expected; delete it and download it again")


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The member's path components, or a refusal for absolute paths, drive letters and ``..``."""
    if not name or "\0" in name:
        raise _refuse(archive, name, "has an empty or invalid name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) >= 2 and unified[1] == ":"):
        raise _refuse(archive, name, "has an absolute path")
    if len(name) > MAX_NAME:
        raise _refuse(archive, name, f"has a {len(name):,}-character path (more than {MAX_NAME:,})")
    parts = tuple(part for part in PurePosixPath(unified).parts if part not in ("", "."))
    if ".." in parts:
        raise _refuse(archive, name, "has a '..' path component")
    if len(parts) > MAX_DEPTH:
        raise _refuse(archive, name, f"is nested {len(parts):,} folders deep (more than {MAX_DEPTH})")
    return parts


class _Budget:
    """Bounds on member count and uncompressed bytes, the defence against archive bombs."""

    def __init__(self, archive: Path, max_members: int, max_total_bytes: int) -> None:
        self.archive = archive
        self.max_members = max_members
        self.max_total_bytes = max_total_bytes
        self.members = 0
        self.total = 0

    def member(self, name: str, size: int) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise DataError(f"refusing to extract {self.archive}: more than {self.max_members:,} members "
                            f"(at {_shown(name)})", hint="the archive is not what was expected")
        self.add_bytes(name, size)

    def add_bytes(self, name: str, size: int) -> None:
        self.total += max(size, 0)
        if self.total > self.max_total_bytes:
            raise DataError(f"refusing to extract {self.archive}: it unpacks to more than "
                            f"{self.max_total_bytes:,} bytes (at {_shown(name)})",
                            hint="the archive is not what was expected")


# --------------------------------------------------------------------------------------------------------------
# tar


def _check_tar(archive: Path, tar: tarfile.TarFile, budget: _Budget) -> list[tarfile.TarInfo]:
    """Read every header (decompressing once), refuse anything unsafe before a single byte is written."""
    members: list[tarfile.TarInfo] = []
    for member in tar:
        budget.member(member.name, member.size)
        _member_parts(archive, member.name)
        if member.issym() or member.islnk():
            raise _refuse(archive, member.name, f"is a link (to {member.linkname!r})")
        if not (member.isreg() or member.isdir()):
            raise _refuse(archive, member.name, "is a device, fifo or other special file")
        # Normalise what the data filter would: no owners, no setuid/sticky, no group/other write, owner rw(x).
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
        members.append(member)
    # tarfile silently stops at a truncated header; a complete archive ends with a zero block.
    tar.fileobj.seek(tar.offset)  # type: ignore[union-attr]
    end = tar.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[union-attr]
    if len(end) < tarfile.BLOCKSIZE or end.strip(b"\0"):
        raise _corrupt(archive, "no end-of-archive marker")
    return members


def _extract_tar(archive: Path, target: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = _check_tar(archive, tar, budget)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, members=members, filter="data")  # type: ignore[call-arg]
        else:  # pragma: no cover - older Pythons; the checks above already enforce the same rules
            tar.extractall(target, members=members)  # noqa: S202


# --------------------------------------------------------------------------------------------------------------
# zip


def _extract_zip(archive: Path, target: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        for info in infos:
            budget.member(info.filename, info.file_size)
            parts = _member_parts(archive, info.filename)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind == stat.S_IFLNK:
                raise _refuse(archive, info.filename, "is a symbolic link")
            if kind and not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
                raise _refuse(archive, info.filename, "is a device, fifo or other special file")
            if info.flag_bits & 0x1:
                raise _refuse(archive, info.filename, "is encrypted")
            plan.append((info, parts))
        written = _Budget(archive, budget.max_members, budget.max_total_bytes)  # counts real bytes, not claims
        for info, parts in plan:
            destination = target.joinpath(*parts) if parts else target
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as source, open(destination, "wb") as sink:
                while chunk := source.read(COPY_CHUNK):
                    written.add_bytes(info.filename, len(chunk))
                    sink.write(chunk)


# --------------------------------------------------------------------------------------------------------------


def _kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    return "tar"


def safe_extract(archive: Path, destination: Path, *, max_members: int = 100_000,
                 max_total_bytes: int = 20 * 2**30) -> Path:
    """Extract a .tar(.gz/.bz2/.xz)/.tgz or .zip into ``destination`` safely and atomically; return it.

    Unsafe members (absolute paths, ``..``, links, devices, fifos) and archives over the member or size bounds
    raise ``DataError`` naming the archive and the member; a corrupt or truncated archive raises ``DataError``
    asking to download it again. On any failure nothing is left at ``destination`` (an existing one is kept);
    on success an existing ``destination`` is replaced.
    """
    archive = Path(archive)
    destination = Path(destination)
    if not archive.is_file():
        raise DataError(f"{archive} is missing", hint="download it first")
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.extracting-", dir=parent))
    except OSError as error:
        raise DataError(f"cannot create {destination}: {error.strerror or error}") from error

    budget = _Budget(archive, max_members, max_total_bytes)
    try:
        if _kind(archive) == "zip":
            _extract_zip(archive, staging, budget)
        else:
            _extract_tar(archive, staging, budget)
        _move_into_place(staging, destination)
    except CnnctlError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except _FILTER_ERROR as error:  # the data filter disagreed with our checks: still a refusal, not corruption
        shutil.rmtree(staging, ignore_errors=True)
        member = getattr(getattr(error, "tarinfo", None), "name", "?")
        raise _refuse(archive, member, f"was rejected by tarfile's data filter ({error})") from error
    except _CORRUPT as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _corrupt(archive, error) from error
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno == errno.ENOSPC:
            raise CnnctlError(f"no space left on device while extracting {archive} into {destination}",
                              hint="free some disk space and try again") from error
        if error.errno is None:  # decompressors (bz2 "Invalid data stream", BadGzipFile) raise errno-less OSError
            raise _corrupt(archive, error) from error
        raise DataError(f"cannot extract {archive} into {destination}: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def _move_into_place(staging: Path, destination: Path) -> None:
    """Rename the finished staging folder to ``destination``, replacing an old one only at the last moment."""
    old: Path | None = None
    if destination.exists() or destination.is_symlink():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
    try:
        os.replace(staging, destination)
    except OSError:
        if old is not None:
            with contextlib.suppress(OSError):
                os.replace(old, destination)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def extract_once(archive: Path, destination: Path, *, log: Callable[[str], None] = lambda _: None) -> Path:
    """Extract ``archive`` into ``destination`` unless a marker there says this very archive (name, size, mtime)
    was extracted completely already; return ``destination``.

    The marker is written only after :func:`safe_extract` moved the finished folder into place, so an
    interrupted extraction is simply done again. Concurrent processes are serialised by the dataset's lock.
    """
    archive, destination = Path(archive), Path(destination)
    try:
        status = archive.stat()
    except OSError as error:
        raise DataError(f"{archive} is missing", hint="run `cnnctl download` for this dataset") from error
    stamp = {"archive": archive.name, "size": status.st_size, "mtime_ns": status.st_mtime_ns}
    marker = destination / EXTRACTED_MARKER

    def done() -> bool:
        try:
            return bool(json.loads(marker.read_text(encoding="utf-8")) == stamp)
        except (OSError, ValueError):
            return False

    if done():
        return destination
    with _locked(archive.parent, log):
        if done():  # another process finished it while we waited
            return destination
        log(f"extracting {archive.name}")
        safe_extract(archive, destination)
        try:
            atomic_write_text(marker, json.dumps(stamp))
        except OSError as error:
            raise DataError(f"cannot write {marker}: {error.strerror or error}") from error
    return destination
