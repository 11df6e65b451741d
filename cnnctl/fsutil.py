"""Where cnnctl writes: atomic file writes (a reader sees the old file or the new one, never half of either) and
the checks that an output location can take them, made before any work starts."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnnctl.errors import CnnctlError, UsageError

STDOUT = "-"  # ``--output -``: write to standard output


def os_reason(error: BaseException) -> str:
    """A short, plain reason for a failed file operation (``permission denied``, ``read-only file system``...)."""
    number = getattr(error, "errno", None)
    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENAMETOOLONG: "file name too long for the file system",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder",
        errno.ENOENT: "no such file or folder",
        errno.ELOOP: "too many levels of symbolic links",
    }
    if number in reasons:
        return reasons[number]
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC as an ``OSError``, or inside another library's error (safetensors: ``... (os error 28)``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(target: Path, *, kept: bool) -> CnnctlError:
    what = "the previous version is intact" if kept else "nothing was written"
    return CnnctlError(f"no space left on device while writing {target}; {what}",
                       hint=f"free some space on the disk that holds {target.parent} (or write elsewhere) and try "
                            "again")


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def regular_target(target: str | os.PathLike[str], *, option: str | None = None, stdout_ok: bool = False) -> Path:
    """The file a write to ``target`` replaces: ``target`` itself, or where its symbolic link points.

    Only regular files are replaced. A device, FIFO, socket or folder (also behind a link) is refused, so writing
    never turns ``/dev/null`` or a pipe into a regular file; a link is followed, so the link stays and its target
    gets the new content; a link to nothing is refused.
    """
    target = Path(target)
    label = f"{option} {target}" if option else str(target)
    try:
        info = target.lstat()
    except FileNotFoundError:
        return target
    except OSError as error:
        raise UsageError(f"cannot write {label}: {_blocking(target, error)}") from error
    if stat.S_ISLNK(info.st_mode):
        resolved = Path(os.path.realpath(target))
        try:
            info = target.stat()  # follows the link as the kernel does (also /proc/self/fd/N)
        except FileNotFoundError:
            raise UsageError(f"cannot write {label}: it is a symbolic link to {resolved}, which does not exist",
                             hint="pass the real file name") from None
        except OSError as error:
            raise UsageError(f"cannot write {label}: {os_reason(error)}") from error
        kind = _kind(info.st_mode)
        if kind:
            raise UsageError(f"refusing to write {label}: it is a symbolic link to {os.readlink(target)}, {kind}",
                             hint="pass a regular file name" + (", or - for standard output" if stdout_ok else ""))
        return resolved
    kind = _kind(info.st_mode)
    if kind:
        raise UsageError(f"refusing to write {label}: it is {kind}, not a regular file",
                         hint="pass a regular file name" + (", or - for standard output" if stdout_ok else ""))
    return target


def require_writable_folder(folder: str | os.PathLike[str], *, option: str, create: bool = True,
                            probe_name: str = "") -> Path:
    """Make sure files can be created in ``folder``, before any work starts; else one ``UsageError`` naming the
    option, the folder and why (permission denied, read-only file system, a file in the way, a name too long).
    ``probe_name`` is the name of the file that will be written, so a name too long is found now too.

    An existing folder is probed by creating (and removing) a temporary file in it. A missing one is not created
    (a command that fails later leaves nothing behind): the nearest existing folder above it must let it be
    created, and every missing name must fit the file system (``create=False``: it must exist)."""
    folder = Path(folder).expanduser()
    label = f"{option} {folder}"
    hint = f"pass {option} a folder you can write to" if option.startswith("-") else "choose a folder you can write to"
    try:
        mode: int | None = folder.stat().st_mode
    except FileNotFoundError:
        mode = None
        if folder.is_symlink():
            raise UsageError(f"cannot write into {label}: it is a symbolic link to {os.readlink(folder)}, which "
                             "does not exist", hint=hint) from None
    except OSError as error:
        raise UsageError(f"cannot write into {label}: {_blocking(folder, error)}", hint=hint) from error
    if mode is not None and not stat.S_ISDIR(mode):
        raise UsageError(f"cannot write into {label}: it is a file, not a folder", hint=hint)
    if mode is None:
        if not create:
            raise UsageError(f"cannot write into {label}: the folder does not exist", hint=hint)
        _check_creatable(folder, probe_name, label, hint)
        return folder
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{probe_name or 'cnnctl-write-check'}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise UsageError(f"cannot write into {label}: {os_reason(error)}", hint=hint) from error
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return folder


def _check_creatable(folder: Path, probe_name: str, label: str, hint: str) -> None:
    """``folder`` does not exist: could it, and a file named ``probe_name`` in it, be created?"""
    missing = [f".{probe_name}.XXXXXXXX.tmp"] if probe_name else []
    ancestor = folder
    while True:
        try:
            ancestor_mode = ancestor.stat().st_mode
            break
        except FileNotFoundError:
            missing.append(ancestor.name)
            ancestor = ancestor.parent
        except OSError as error:
            raise UsageError(f"cannot create {label}: {_blocking(ancestor, error)}", hint=hint) from error
    if not stat.S_ISDIR(ancestor_mode):
        raise UsageError(f"cannot create {label}: {ancestor} is a file, not a folder", hint=hint)
    try:
        name_max = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if any(len(os.fsencode(name)) > name_max for name in missing):
        raise UsageError(f"cannot create {label}: file name too long for the file system", hint=hint)
    if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
        raise UsageError(f"cannot create {label}: read-only file system", hint=hint)
    if not os.access(ancestor, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise UsageError(f"cannot create {label}: permission denied (in {ancestor})", hint=hint)


def _blocking(folder: Path, error: OSError) -> str:
    """Why ``folder`` cannot be created; for ENOTDIR, which part of its path is a file."""
    if error.errno == errno.ENOTDIR:
        for parent in reversed((folder, *folder.parents)):
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a folder"
    return os_reason(error)


def is_folder(path: str | os.PathLike[str]) -> bool:
    """``Path.is_dir`` that answers False for a name the file system refuses (too long, ...) instead of raising."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def require_writable_file(path: str | os.PathLike[str], *, option: str, stdout_ok: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written atomically: a regular file (or a link to one) or a
    new name, in a folder where files can be created. Returns the file that will be replaced."""
    target = regular_target(Path(path).expanduser(), option=option, stdout_ok=stdout_ok)
    require_writable_folder(target.parent, option=option, probe_name=target.name)
    return target


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it over ``target``.

    Only a regular file is replaced (a symbolic link is followed; a device, FIFO or folder is refused). On any
    failure the temporary file is removed and ``target`` is left as it was. A full disk is reported as a
    ``CnnctlError`` that says the previous file is intact.
    """
    target = regular_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(target, kept=target.exists()) from error
        raise CnnctlError(f"cannot write {target}: {_blocking(target.parent, error)}",
                          hint="write somewhere you have permission to") from error
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 (and writers such as safetensors may recreate the file): give the usual permissions
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, Exception) and not isinstance(error, CnnctlError) and is_disk_full(error):
            raise disk_full_error(target, kept=target.exists()) from error
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy ``source`` over ``target`` atomically (the same bytes, without serialising them again)."""
    import shutil

    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def displayable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (Python keeps them as lone surrogates) written as
    ``\\xNN``, so it can be printed, put in a CSV or JSON file, and still shows which file it was."""
    if not any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        return text
    return "".join(
        char if not 0xD800 <= ord(char) <= 0xDFFF
        else f"\\x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF
        else f"\\u{ord(char):04x}"
        for char in text
    )
