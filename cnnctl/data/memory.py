"""How much memory this process can still take, for the decision to keep an image folder in memory or stream it.

The machine's own number (``MemAvailable``: free memory plus the page cache the kernel can drop) is not the
whole story: inside a container, a Slurm job or a systemd unit the process's control group has a memory limit
the machine-wide numbers do not show, and going over it gets the process killed, not swapped. A container
limited to 4 GiB on a 256 GiB host would otherwise see 128 GiB of budget. So the room under every limit on the
way from the process's cgroup up to its hierarchy's root (cgroup v1 and v2) is read too, and the smallest wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# cgroup v1 writes "no limit" as the largest page-aligned 64-bit number; anything this large is no limit
_NO_LIMIT = 2**62


@dataclass(frozen=True)
class Available:
    """Bytes this process can still allocate, and where the number comes from, for messages."""

    bytes: int
    source: str


def available_memory(root: Path = Path("/")) -> Available | None:
    """The smaller of the machine's available memory and the room left under the process's cgroup memory limits;
    None where neither can be read (not Linux, and ``sysconf`` does not know). ``root``: a fake tree in tests."""
    machine = _machine_available(root)
    limited = _cgroup_room(root)
    if limited is not None and (machine is None or limited.bytes < machine.bytes):
        return limited
    return machine


def _machine_available(root: Path) -> Available | None:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                kib = int(line.split()[1])
                return Available(kib * 1024, f"the {_gib(kib * 1024)} available")
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:  # no /proc/meminfo (macOS, old kernels): the free pages only
        free = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None
    return Available(free, f"the {_gib(free)} free")


def _cgroup_room(root: Path) -> Available | None:
    """The least room (limit − usage + reclaimable page cache) under any memory limit of this process's cgroups."""
    best: Available | None = None
    for directory, mount, version in process_memory_cgroups(root):
        for level in (directory, *directory.parents):  # up to the hierarchy's mount point
            room = _room_at(level, version)
            if room is not None and (best is None or room.bytes < best.bytes):
                best = room
            if level == mount or mount not in level.parents:
                break
    return best


def process_memory_cgroups(root: Path = Path("/")) -> list[tuple[Path, Path, int]]:
    """(this process's cgroup folder, its hierarchy's mount point, cgroup version) for the v1 memory hierarchy
    and the v2 unified one; empty where /proc does not say."""
    return process_cgroups(root, "memory")


def process_cgroups(root: Path = Path("/"), controller: str = "memory") -> list[tuple[Path, Path, int]]:
    """(this process's cgroup folder, its hierarchy's mount point, cgroup version) for the v1 hierarchy of
    ``controller`` (``memory``, ``cpu``) and the v2 unified one; empty where /proc does not say."""
    try:
        memberships = (root / "proc/self/cgroup").read_text().splitlines()
        mounts = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return _cgroups(root, memberships, mounts, controller)


def _cgroups(root: Path, memberships: list[str], mounts: list[str], controller: str) -> list[tuple[Path, Path, int]]:
    """(the process's cgroup folder, its hierarchy's mount point, cgroup version) for the v1 hierarchy of
    ``controller`` and the v2 unified one, from /proc/self/cgroup and the mount roots in /proc/self/mountinfo."""
    paths: dict[int, str] = {}
    for line in memberships:  # "4:memory:/docker/abc" (v1), "0::/user.slice/..." (v2)
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths[2] = parts[2]
        elif controller in parts[1].split(","):
            paths[1] = parts[2]
    found = []
    for line in mounts:  # "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
        fields = line.split()
        if "-" not in fields or fields.index("-") < 5 or len(fields) < fields.index("-") + 4:
            continue
        dash = fields.index("-")
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        version = 2 if fstype == "cgroup2" else 1 if fstype == "cgroup" and controller in options else 0
        if version not in paths:
            continue
        inside, mount_root = Path(paths.pop(version)), Path(fields[3])
        mount = root / fields[4].lstrip("/")
        # a container sees its own cgroup as the mount's root, and /proc/self/cgroup may still name the host path
        relative = inside.relative_to(mount_root) if inside.is_relative_to(mount_root) else Path()
        found.append((mount / relative, mount, version))
    return found


def _room_at(folder: Path, version: int) -> Available | None:
    names = ("memory.max", "memory.current", "inactive_file") if version == 2 else (
        "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    try:
        text = (folder / names[0]).read_text().strip()
        if text == "max" or int(text) >= _NO_LIMIT:
            return None
        limit, usage = int(text), int((folder / names[1]).read_text())
    except (OSError, ValueError):
        return None
    reclaimable = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == names[2]:
                reclaimable = int(value)
                break
    except (OSError, ValueError):
        pass
    room = max(0, min(limit, limit - usage + reclaimable))
    return Available(room, f"the {_gib(room)} left under the {_gib(limit)} memory limit of its cgroup")


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"
