"""How many CPU threads a training takes: the CPUs this process may use, less what other work keeps busy.

torch's default is every core of the machine. On a shared machine that is the slowest choice: torch's threads
meet at a barrier after every operation, so one thread that the scheduler parks behind another process stalls
all the others, and two trainings that each take every core both crawl. So the default is:

- the CPUs this process may use: its affinity (``taskset``, a cpuset) and its cgroup's CPU quota (a container's
  ``--cpus``, a systemd ``CPUQuota``, cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), rounded down;
- less the work of other processes on them: the 1-minute load average at the start, then, while training, the
  busy time of those CPUs (``/proc/stat``) minus this process's own CPU time, measured over a few seconds. Both
  are machine-wide numbers; where the process may use only part of the machine, others are taken to be spread
  evenly, so its share of them is counted;
- at least one thread.

The numbers are pure functions (:func:`choose_threads`, :func:`adjust_threads`) of what was read, so tests can
give them any affinity, quota and load.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cnnctl.data.memory import process_cgroups

# more threads only once this much more than a whole CPU is free, so that a load near a half does not flip it
RAISE_MARGIN = 0.75


@dataclass(frozen=True)
class CpuShare:
    """The CPUs of the machine, those in this process's affinity, and its cgroup quota in CPUs (None: none)."""

    machine: int
    affinity: int
    quota: float | None = None

    @property
    def usable(self) -> int:
        """Whole CPUs this process may use: its affinity, capped by its quota rounded down (at least one)."""
        cpus = self.affinity if self.quota is None else min(self.affinity, math.floor(self.quota + 1e-9))
        return max(1, cpus)

    def others_on_ours(self, busy_on_machine: float) -> float:
        """The part of other processes' work (in CPUs, over the whole machine) that falls on this process's
        usable CPUs, taking it to be spread evenly."""
        return busy_on_machine * self.usable / max(self.machine, 1)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    usable: int
    machine: int
    reason: str  # why fewer than the machine's CPUs; empty when it takes them all

    @property
    def note(self) -> str:
        """For the run's start line: the number and why, when it is not all of the machine's CPUs."""
        return f"{self.threads} of {self.machine} CPU threads: {self.reason}" if self.reason else ""


def choose_threads(share: CpuShare, load: float | None) -> ThreadChoice:
    """The thread count at the start of a run: the usable CPUs less the load other processes put on them
    (rounded to the nearest whole CPU), at least one. ``load``: the machine's 1-minute load average."""
    usable = share.usable
    others = share.others_on_ours(load) if load is not None else 0.0
    threads = max(1, min(usable, math.floor(usable - others + 0.5)))
    reasons = []
    if share.affinity < share.machine:
        reasons.append(f"this process may run on {share.affinity} of them")
    if share.quota is not None and share.quota < share.affinity:
        reasons.append(f"its cgroup's CPU quota is {share.quota:g} CPUs")
    if threads < usable:
        spread = "" if usable == share.machine else f", about {others:.1f} on the {usable} it may use"
        reasons.append(f"the machine's load average is {load:.1f}{spread}")
    reason = "; ".join(reasons) if threads < share.machine else ""
    return ThreadChoice(threads, usable, share.machine, reason)


def adjust_threads(current: int, usable: int, others: float) -> int:
    """The thread count after measuring that other processes kept ``others`` of the usable CPUs busy: fewer as
    soon as the free CPUs round below ``current``, more only once a whole further CPU is free (with a margin)."""
    free = usable - others
    fewer = max(1, min(usable, math.floor(free + 0.5)))
    if fewer < current:
        return fewer
    if free >= current + RAISE_MARGIN:
        return max(1, min(usable, math.floor(free + 1 - RAISE_MARGIN)))
    return current


def cpu_share(root: Path = Path("/")) -> CpuShare:
    """This process's :class:`CpuShare`, read from the system (``root``: a fake tree in tests)."""
    machine = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        affinity = machine
    return CpuShare(machine, min(affinity, machine), cgroup_cpu_quota(root))


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """The smallest CPU quota (quota ÷ period, in CPUs) on the way from this process's cgroup up to its
    hierarchy's root, cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``); None where there is none."""
    smallest: float | None = None
    for directory, mount, version in process_cgroups(root, "cpu"):
        for level in (directory, *directory.parents):
            quota = _quota_at(level, version)
            if quota is not None and (smallest is None or quota < smallest):
                smallest = quota
            if level == mount or mount not in level.parents:
                break
    return smallest


def _quota_at(folder: Path, version: int) -> float | None:
    try:
        if version == 2:
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100000)
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        if quota <= 0:  # -1: no limit
            return None
        return quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def threads_for_this_process() -> ThreadChoice:
    return choose_threads(cpu_share(), load_average())


class OthersMeter:
    """How many CPUs other processes kept busy since the last reading: the busy time of this process's CPUs
    (``/proc/stat``) minus its own CPU time, over the wall time. ``None`` where /proc/stat cannot be read."""

    def __init__(self, stat: Path = Path("/proc/stat")):
        self.stat = stat
        try:
            self.cpus = {f"cpu{n}" for n in os.sched_getaffinity(0)}
        except (AttributeError, OSError):
            self.cpus = set()
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        busy = _busy_seconds(self.stat, self.cpus, self.tick)
        return None if busy is None else (time.monotonic(), busy, time.process_time())

    def others(self) -> float | None:
        """CPUs' worth of other processes' work on this process's CPUs since the last call (or creation)."""
        now, last = self._read(), self.last
        self.last = now
        if now is None or last is None or now[0] - last[0] <= 0:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))


def _busy_seconds(stat: Path, cpus: set[str], tick: float) -> float | None:
    """Seconds the CPUs named in ``cpus`` (all of them when empty) spent on anything but idle and I/O wait."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        if cpus and fields[0] not in cpus:
            continue
        values = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
        total += sum(values) - values[3] - values[4]
    return total / tick
