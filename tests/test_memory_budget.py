"""The memory budget sees a container's or job's memory limit (cgroup v1 and v2), not only the machine's memory:
read from fake /proc and cgroup trees, then from a real cgroup where this machine lets the tests make one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cnnctl.data.memory import available_memory
from cnnctl.data.stream import BUDGET_ENV

GIB = 2**30
V1_UNLIMITED = "9223372036854771712"


def fake_tree(root: Path, *, cgroup: str, mountinfo: str, files: dict[str, str], available_gib: float = 20) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/meminfo").write_text(f"MemTotal:  99999999 kB\nMemFree:  1000 kB\n"
                                       f"MemAvailable:  {int(available_gib * 2**20)} kB\n")
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


V1_MOUNTS = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
             "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
             "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
             "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")


def test_a_v1_limit_above_the_process_cgroup_is_what_is_left(tmp_path: Path) -> None:
    """A Slurm-like job: the step's own cgroup has no limit, the job's has 2 GiB of which 1.5 are used, a quarter
    of a GiB of that being page cache the kernel can drop."""
    memory = "sys/fs/cgroup/memory/job_7"
    root = fake_tree(tmp_path, cgroup="5:cpuset:/job_7/step_0\n4:memory:/job_7/step_0\n0::/\n", mountinfo=V1_MOUNTS,
                     files={f"{memory}/memory.limit_in_bytes": str(2 * GIB),
                            f"{memory}/memory.usage_in_bytes": str(int(1.5 * GIB)),
                            f"{memory}/memory.stat": f"cache 1\ntotal_inactive_file {GIB // 4}\n",
                            f"{memory}/step_0/memory.limit_in_bytes": V1_UNLIMITED,
                            f"{memory}/step_0/memory.usage_in_bytes": str(GIB),
                            "sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED})
    available = available_memory(root)
    assert available is not None and available.bytes == int(0.75 * GIB)
    assert available.source == "the 0.8 GiB left under the 2.0 GiB memory limit of its cgroup"


def test_a_v2_container_sees_its_limit_and_no_limit_leaves_the_machine_number(tmp_path: Path) -> None:
    """A container with its own cgroup namespace: /proc/self/cgroup says "/", the mount is the container's."""
    mounts = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    root = fake_tree(tmp_path / "limited", cgroup="0::/\n", mountinfo=mounts,
                     files={"sys/fs/cgroup/memory.max": str(4 * GIB),
                            "sys/fs/cgroup/memory.current": str(GIB),
                            "sys/fs/cgroup/memory.stat": "anon 1\ninactive_file 0\n"})
    assert available_memory(root).bytes == 3 * GIB
    free = fake_tree(tmp_path / "free", cgroup="0::/\n", mountinfo=mounts,
                     files={"sys/fs/cgroup/memory.max": "max\n", "sys/fs/cgroup/memory.current": str(GIB)},
                     available_gib=5)
    assert available_memory(free).bytes == 5 * GIB
    assert available_memory(free).source == "the 5.0 GiB available"
    # a limit larger than what the machine has left: the machine's number is the smaller one
    roomy = fake_tree(tmp_path / "roomy", cgroup="0::/\n", mountinfo=mounts,
                      files={"sys/fs/cgroup/memory.max": str(64 * GIB), "sys/fs/cgroup/memory.current": str(GIB)},
                      available_gib=5)
    assert available_memory(roomy).bytes == 5 * GIB


def test_a_v1_cgroup_bind_mounted_at_its_own_path(tmp_path: Path) -> None:
    """Older Docker: /proc/self/cgroup names the host's path, the mount's root is that same path."""
    mounts = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
    root = fake_tree(tmp_path, cgroup="4:memory:/docker/abc\n", mountinfo=mounts,
                     files={"sys/fs/cgroup/memory/memory.limit_in_bytes": str(GIB),
                            "sys/fs/cgroup/memory/memory.usage_in_bytes": str(GIB // 4)})
    assert available_memory(root).bytes == 3 * GIB // 4


def test_without_proc_the_machine_free_memory_is_used(tmp_path: Path) -> None:
    available = available_memory(tmp_path)  # nothing there: sysconf's free pages
    assert available is not None and available.bytes > 0 and available.source.endswith("free")


def load_memory_limit_benchmark():
    """benchmarks/memory_limit.py, whose cgroup helpers the real-cgroup test shares."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "memory_limit.py"
    spec = importlib.util.spec_from_file_location("memory_limit_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MEMORY_LIMIT = load_memory_limit_benchmark()


@pytest.mark.skipif(sys.platform != "linux" or MEMORY_LIMIT.memory_cgroup() is None,
                    reason="needs a writable cgroup memory controller (Linux, as root: CI's machine has one)")
def test_a_process_in_a_real_memory_limited_cgroup_gets_a_budget_under_the_limit() -> None:
    parent, version = MEMORY_LIMIT.memory_cgroup()
    child = parent / f"cnnctl-test-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        (child / ("memory.limit_in_bytes" if version == 1 else "memory.max")).write_text(str(GIB))
        tasks = "tasks" if version == 1 else "cgroup.procs"
        code = ("import os, sys\n"
                f"open({str(child / tasks)!r}, 'w').write(str(os.getpid()))\n"
                "from cnnctl.data.stream import memory_budget\n"
                "budget, source = memory_budget()\nprint(budget)\nprint(source)\n")
        environment = {key: value for key, value in os.environ.items() if key != BUDGET_ENV}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                                check=True, timeout=60)
        budget, source = result.stdout.splitlines()
        assert 0.3 * GIB < int(budget) <= 0.5 * GIB, result.stdout
        assert source.startswith("half of the ") and source.endswith("left under the 1.0 GiB memory limit of its "
                                                                      "cgroup"), source
    finally:
        child.rmdir()
