"""The default CPU thread count: chosen from the CPUs a process may use (affinity, cgroup quota) and the load of
other work, and followed while training. The choice is a pure function of what was read, checked here with fake
affinity, quota and load against an independent computation; the readers get fake /proc and cgroup trees."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import cnnctl
from cnnctl.engine import threads as threads_module
from cnnctl.engine.callbacks import Callback
from cnnctl.engine.threads import (
    RAISE_MARGIN,
    CpuShare,
    OthersMeter,
    adjust_threads,
    cgroup_cpu_quota,
    choose_threads,
)
from cnnctl.progress import PlainReporter


def nearest_whole(value: float, low: int, high: int) -> int:
    """The whole number in [low, high] nearest to ``value``, the larger one on a tie (found by trying them all)."""
    return min(range(low, high + 1), key=lambda n: (abs(n - value), -n))


def test_threads_are_the_usable_cpus_less_the_load_on_them() -> None:
    for machine, quota, load in itertools.product([1, 2, 4, 16, 64], [None, 0.5, 1.5, 2.0, 3.9, 100.0],
                                                  [None, 0.0, 0.4, 0.6, 1.5, 3.5, 6.7, 60.0]):
        affinities = sorted({1, max(1, machine // 2), machine})
        for affinity in affinities:
            check_choice(machine, affinity, quota, load)


def check_choice(machine: int, affinity: int, quota: float | None, load: float | None) -> None:
    share = CpuShare(machine=machine, affinity=affinity, quota=quota)
    usable = affinity if quota is None else max(1, min(affinity, int(quota)))  # whole CPUs of the quota
    others = 0.0 if load is None else load * usable / machine  # the load spread evenly over the machine
    choice = choose_threads(share, load)
    assert choice.usable == usable
    assert choice.threads == nearest_whole(usable - others, 1, usable)
    assert (choice.note == "") == (choice.threads == machine)


def test_the_start_note_says_the_number_and_why() -> None:
    busy = choose_threads(CpuShare(machine=2, affinity=2), 3.5)  # the machine: 2 cores, load 3.5
    assert busy.threads == 1
    assert busy.note == "1 of 2 CPU threads: the machine's load average is 3.5"
    quiet = choose_threads(CpuShare(machine=2, affinity=2), 0.2)
    assert (quiet.threads, quiet.note) == (2, "")
    pinned = choose_threads(CpuShare(machine=16, affinity=4, quota=2.5), 0.0)
    assert pinned.threads == 2
    assert "may run on 4 of them" in pinned.note and "quota is 2.5 CPUs" in pinned.note


def test_while_training_threads_drop_at_once_and_rise_only_with_a_whole_free_cpu() -> None:
    for usable, current, others in itertools.product([1, 2, 3, 8], [1, 2, 3, 8],
                                                     [0.0, 0.3, 0.5, 0.9, 1.0, 1.4, 2.2, 7.5, 20.0]):
        if current <= usable:
            check_adjustment(usable, current, others)


def check_adjustment(usable: int, current: int, others: float) -> None:
    free = usable - others
    wanted = adjust_threads(current, usable, others)
    assert 1 <= wanted <= usable
    if nearest_whole(free, 1, usable) < current:
        assert wanted == nearest_whole(free, 1, usable)
    elif wanted > current:
        assert free >= current + RAISE_MARGIN and wanted <= free + 1 - RAISE_MARGIN
    else:
        assert wanted == current
    # settled: the same measurement again changes nothing, so the count does not flip back and forth
    assert adjust_threads(wanted, usable, others) == wanted


def test_two_trainings_on_two_cores_settle_on_one_thread_each() -> None:
    # each at 2 threads measures the other keeping about one CPU busy; at 1 thread each, the other still one
    assert adjust_threads(2, 2, 1.0) == 1
    assert adjust_threads(1, 2, 1.0) == 1
    assert adjust_threads(1, 2, 0.1) == 2  # the other one ended


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_on_the_way_up(tmp_path: Path) -> None:
    write(tmp_path / "proc/self/cgroup", "0::/jobs/trainer\n")
    write(tmp_path / "proc/self/mountinfo", "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n")
    write(tmp_path / "sys/fs/cgroup/jobs/trainer/cpu.max", "max 100000\n")
    write(tmp_path / "sys/fs/cgroup/jobs/cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == pytest.approx(1.5)
    write(tmp_path / "sys/fs/cgroup/jobs/trainer/cpu.max", "50000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == pytest.approx(0.5)


def test_cgroup_v1_quota_and_no_limit(tmp_path: Path) -> None:
    write(tmp_path / "proc/self/cgroup", "2:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n")
    write(tmp_path / "proc/self/mountinfo",
          "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n")
    folder = tmp_path / "sys/fs/cgroup/cpu,cpuacct/docker/abc"
    write(folder / "cpu.cfs_quota_us", "-1\n")
    write(folder / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    write(folder / "cpu.cfs_quota_us", "300000\n")
    assert cgroup_cpu_quota(tmp_path) == pytest.approx(3.0)
    assert cgroup_cpu_quota(tmp_path / "nowhere") is None


def stat_text(cpus: dict[str, tuple[int, ...]]) -> str:
    total = [sum(values[i] for values in cpus.values()) for i in range(10)]
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"{name} " + " ".join(map(str, values)) for name, values in cpus.items()]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 99"]) + "\n"


def test_others_are_the_busy_time_of_our_cpus_less_our_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    #                user nice system idle iowait irq softirq steal guest guest_nice (ticks)
    before = {"cpu0": (100, 0, 50, 1000, 10, 0, 0, 0, 0, 0), "cpu1": (10, 0, 5, 900, 0, 0, 0, 0, 0, 0),
              "cpu2": (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)}
    after = {"cpu0": (250, 10, 90, 1040, 30, 2, 3, 5, 0, 0), "cpu1": (150, 0, 25, 950, 0, 0, 0, 0, 0, 0),
             "cpu2": (500, 0, 0, 0, 0, 0, 0, 0, 0, 0)}  # cpu2 is not ours: its work does not count
    clock = {"wall": 10.0, "own": 3.0}
    monkeypatch.setattr(threads_module.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(threads_module.time, "process_time", lambda: clock["own"])
    stat.write_text(stat_text(before))
    meter = OthersMeter(stat)
    meter.cpus, meter.tick = {"cpu0", "cpu1"}, 100
    meter.last = meter._read()
    stat.write_text(stat_text(after))
    clock.update(wall=12.0, own=4.5)
    busy_ticks = sum(sum(a[:8]) - a[3] - a[4] - (sum(b[:8]) - b[3] - b[4])
                     for name, (a, b) in {n: (after[n], before[n]) for n in ("cpu0", "cpu1")}.items())
    assert meter.others() == pytest.approx((busy_ticks / 100 - 1.5) / 2.0)
    assert OthersMeter(tmp_path / "missing").others() is None


@pytest.fixture
def restore_threads():
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


def test_the_governor_lowers_the_threads_and_says_why(restore_threads) -> None:
    from cnnctl.engine.callbacks.threads import ThreadGovernor

    messages: list[str] = []
    trainer = SimpleNamespace(thread_choice=choose_threads(CpuShare(machine=2, affinity=2), 0.0),
                              reporter=SimpleNamespace(message=messages.append))
    torch.set_num_threads(2)
    governor = ThreadGovernor(interval_s=0.0)
    governor.on_fit_start(trainer)
    governor.meter = SimpleNamespace(others=lambda: 1.1, cpus={"cpu0", "cpu1"})
    governor.on_train_batch_end(trainer, 1, None)
    assert torch.get_num_threads() == 1
    assert messages == ["CPU threads 2 → 1: other processes keep about 1.1 of the 2 CPUs this run may use busy"]
    governor.on_train_batch_end(trainer, 2, None)
    assert len(messages) == 1  # unchanged, nothing said
    pinned = ThreadGovernor(interval_s=0.0)
    pinned.on_fit_start(SimpleNamespace(thread_choice=None))  # --threads given: left alone
    assert pinned.meter is None


def test_a_cpu_run_takes_the_chosen_threads_and_its_start_line_says_so(micro_digits, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        restore_threads) -> None:
    monkeypatch.setattr(threads_module, "cpu_share", lambda root=None: CpuShare(machine=2, affinity=2))
    monkeypatch.setattr(threads_module, "load_average", lambda: 3.5)
    seen: list[int] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, step, loss) -> None:
            seen.append(torch.get_num_threads())

    err = io.StringIO()
    cnnctl.train("simplecnn", dataset="microdigits", epochs=1, batch_size=16, plots=False, out=str(tmp_path),
                 device="cpu", reporter=PlainReporter(out=io.StringIO(), err=err), callbacks=[Record()])
    start = next(line for line in err.getvalue().splitlines() if line.startswith("training "))
    assert "on cpu (1 of 2 CPU threads: the machine's load average is 3.5):" in start
    assert seen and set(seen) == {1}
