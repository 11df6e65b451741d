"""An image folder under a memory limit the machine-wide numbers do not show (a container's, a Slurm job's):
``cnnctl train --data`` in a cgroup limited to ``--limit``, once with the default ``--cache auto`` and once with
the decoded images forced into memory (``--cache memory`` with the budget lifted), which is what a budget read
from the machine's free memory chooses there.

    python benchmarks/memory_limit.py --data FOLDER --arch mobilenet_v3_small --img-size 224 --limit 2.5G

Needs Linux, root and a cgroup memory controller (v1 or v2). Prints, per run: the cache line cnnctl printed, its
exit status, the epoch times, the cgroup's peak memory and whether the kernel's OOM killer struck.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cnnctl.data.stream import BUDGET_ENV, parse_bytes  # noqa: E402

# join the cgroup first, then run cnnctl in this same process (its workers inherit the cgroup)
JOIN_AND_RUN = ("import os, runpy, sys\nopen(sys.argv.pop(1), 'w').write(str(os.getpid()))\n"
                "sys.argv = ['cnnctl', *sys.argv[1:]]\nrunpy.run_module('cnnctl', run_name='__main__')")


def memory_cgroup() -> tuple[Path, int] | None:
    """A cgroup folder of this process's memory hierarchy (v1 or v2) that a child with a limit can be made in,
    and its cgroup version; None without one (not Linux, not root, or no memory controller)."""
    from cnnctl.data.memory import process_memory_cgroups

    for folder, _, version in process_memory_cgroups():
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            continue
        if version == 2 and "memory" not in (folder / "cgroup.subtree_control").read_text().split():
            continue
        return folder, version
    return None


def counter(path: Path, key: str) -> int | None:
    """``key N`` from a cgroup's flat-keyed file (memory.events, memory.oom_control)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except OSError:
        pass
    return None


def limited_run(arguments: list[str], limit: int, environment: dict[str, str]) -> dict[str, Any]:
    found = memory_cgroup()
    if found is None:
        raise SystemExit("no writable cgroup memory controller here (needs Linux and root)")
    parent, version = found
    group = parent / f"cnnctl-bench-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / ("memory.limit_in_bytes" if version == 1 else "memory.max")).write_text(str(limit))
        tasks = group / ("tasks" if version == 1 else "cgroup.procs")
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", JOIN_AND_RUN, str(tasks), "train", *arguments],
                                capture_output=True, text=True, env=environment, cwd=REPO)
        wall = time.perf_counter() - started
        peak_file = group / ("memory.max_usage_in_bytes" if version == 1 else "memory.peak")
        peak = int(peak_file.read_text()) if peak_file.exists() else None
        kills = counter(group / ("memory.oom_control" if version == 1 else "memory.events"), "oom_kill")
    finally:
        for _ in range(50):  # the killed process's cgroup empties a moment after it is reaped
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    output = result.stdout + result.stderr
    cache_line = next((line.strip() for line in output.splitlines()
                       if line.strip().startswith(("streaming ", "decoding "))), "")
    run_dir = re.search(r"run folder: (.+)", result.stdout)
    epochs: list[float] = []
    if run_dir and (Path(run_dir.group(1).strip()) / "metrics.csv").exists():
        rows = list(csv.DictReader((Path(run_dir.group(1).strip()) / "metrics.csv").open()))
        epochs = [float(row["epoch_time_s"]) for row in rows]
    return {"returncode": result.returncode, "wall_s": wall, "epoch_s": epochs, "peak_bytes": peak,
            "oom_kills": kills, "cache_line": cache_line, "last_line": output.strip().splitlines()[-1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an image folder (train/ and test/ with class folders)")
    parser.add_argument("--arch", default="mobilenet_v3_small")
    parser.add_argument("--img-size", default="224")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--batch-size", default="64")
    parser.add_argument("--limit", default="2.5G", help="the cgroup's memory limit (K/M/G suffixes)")
    parser.add_argument("--out", default=None, help="run folders (default: a folder next to --data)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args()
    limit = parse_bytes(args.limit)
    out = args.out or str(Path(args.data).resolve().parent / "memory-limit-runs")
    common = [args.arch, "--data", args.data, "--img-size", args.img_size, "--epochs", args.epochs,
              "--batch-size", args.batch_size, "--val-split", "0", "--out", out, "--no-plots"]
    base = {key: value for key, value in os.environ.items() if key != BUDGET_ENV}
    runs = {
        "cache auto (the budget sees the limit)": limited_run(common, limit, base),
        "cache memory (the machine-wide budget's choice)": limited_run(
            [*common, "--cache", "memory"], limit, {**base, BUDGET_ENV: "1T"}),
    }
    print(f"cnnctl train {' '.join(common[:9])} in a cgroup limited to {limit / 2**30:.2f} GiB")
    for name, measured in runs.items():
        peak = "unknown" if measured["peak_bytes"] is None else f"{measured['peak_bytes'] / 2**30:.2f} GiB"
        epochs = ", ".join(f"{s:.1f}s" for s in measured["epoch_s"]) or "none"
        print(f"{name}:\n  {measured['cache_line'] or '(no cache line)'}\n  exit {measured['returncode']}, "
              f"OOM kills {measured['oom_kills']}, peak {peak}, epochs {epochs}, wall {measured['wall_s']:.1f}s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"limit_bytes": limit, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
