"""CPU threads on a shared machine: training throughput with cnnctl's default ``--threads`` (the free CPUs this
process may use, followed while training) against the old default (every core), side by side in one run.

    python benchmarks/threads.py                          # lenet5, 30,000 MNIST images, 1 epoch per leg
    python benchmarks/threads.py --arch smallvgg --limit 6000 --rounds 2

Legs, each ``cnnctl train ARCH --dataset mnist --limit N --epochs 1`` in fresh processes, once with the default
threads ("auto") and once with ``--threads <all cores>`` ("all"), interleaved so both meet the same background:

  solo     one training alone;
  pair     two trainings started together (each one's throughput against its own solo leg's);
  beside   one training beside a CPU-bound process (a single-threaded busy loop).

The number is the training throughput of the epoch (images/s from metrics.csv); the pair's target is that each
of the two keeps at least 40 % of the solo throughput. ``uptime`` is printed before each leg: the machine may be
shared with other work that this script does not control, so compare the columns of one run, not runs.
MNIST comes from ``$CNNCTL_MIRROR`` or ``/work/shared/datasets/mnist``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.40


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def start_training(args: argparse.Namespace, out: Path, name: str, threads: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "cnnctl", "train", args.arch, "--dataset", "mnist", "--limit",
               str(args.limit), "--epochs", "1", "--val-split", "1000", "--no-plots", "--out", str(out),
               "--name", name, "--seed", "0"]
    if threads != "auto":
        command += ["--threads", threads]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "CNNCTL_MIRROR": args.mirror, "NO_COLOR": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def finish(process: subprocess.Popen, out: Path, name: str) -> dict[str, object]:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{name} failed ({process.returncode}):\n{stderr[-2000:]}")
    with open(out / name / "1" / "metrics.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    lines = (stdout + stderr).splitlines()
    start = next((line for line in lines if line.startswith("training ")), "")
    note = start[start.find(" on cpu") + 7:start.find(":", start.find(" on cpu"))].strip(" ()") if start else ""
    changes = [line.split(":")[0] for line in lines if line.startswith("CPU threads ")]
    return {"images_per_s": float(row["images_per_s"]), "seconds": float(row["epoch_time_s"]),
            "start": note or "all cores", "changes": changes}


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def leg(args: argparse.Namespace, out: Path, kind: str, threads: str, index: int) -> list[dict[str, object]]:
    print(f"  [{uptime()}] {kind} {threads}", flush=True)
    names = [f"{kind}-{threads}-{index}-{n}" for n in range(2 if kind == "pair" else 1)]
    hog = busy_loop() if kind == "beside" else None
    try:
        if hog is not None:
            time.sleep(2)  # the busy loop is running before the training starts
        processes = [start_training(args, out, name, threads) for name in names]
        return [finish(process, out, name) for process, name in zip(processes, names)]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet5")
    parser.add_argument("--limit", type=int, default=30000, help="training images per leg")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every leg this many times")
    parser.add_argument("--mirror", default=os.environ.get("CNNCTL_MIRROR", "/work/shared/datasets/mnist"))
    args = parser.parse_args()
    cores = str(os.cpu_count() or 1)
    print(f"threads benchmark: {args.arch}, {args.limit:,} MNIST images, 1 epoch per leg, {cores} cores; "
          f"'all' = --threads {cores} (the old default), 'auto' = cnnctl's default")
    results: dict[tuple[str, str], list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="cnnctl-threads-") as folder:
        for index in range(args.rounds):
            for kind in ("solo", "pair", "beside"):
                for threads in (("auto", cores) if index % 2 == 0 else (cores, "auto")):
                    results.setdefault((kind, threads), []).extend(leg(args, Path(folder), kind, threads, index))
    print(f"\n{'leg':<8}{'threads':<9}{'img/s (each)':<34}{'of solo':<26}start → changes")
    for (kind, threads), runs in sorted(results.items(), key=lambda item: (item[0][0] != "solo", item[0])):
        solo = results[("solo", threads)]
        solo_rate = sum(float(r["images_per_s"]) for r in solo) / len(solo)
        rates = [float(r["images_per_s"]) for r in runs]
        shares = [rate / solo_rate for rate in rates]
        started = sorted({str(r["start"]) for r in runs})
        changes = sorted({change for r in runs for change in r["changes"]})  # type: ignore[attr-defined]
        print(f"{kind:<8}{threads:<9}{', '.join(f'{rate:,.0f}' for rate in rates):<34}"
              f"{', '.join(f'{share:.0%}' for share in shares):<26}{'; '.join(started)}"
              + (f" → {', '.join(changes)}" if changes else ""))
    def mean_rate(kind: str, threads: str) -> float:
        runs = results[(kind, threads)]
        return sum(float(r["images_per_s"]) for r in runs) / len(runs)

    print("\nauto / all, side by side: " + ", ".join(
        f"{kind} {mean_rate(kind, 'auto') / mean_rate(kind, cores):.2f}x" for kind in ("solo", "pair", "beside")))
    for threads in ("auto", cores):
        pair = [float(r["images_per_s"]) for r in results[("pair", threads)]]
        solo = sum(float(r["images_per_s"]) for r in results[("solo", threads)]) / len(results[("solo", threads)])
        worst = min(pair) / solo
        print(f"pair, {threads}: the slower of each two keeps {worst:.0%} of its solo throughput "
              f"({'meets' if worst >= TARGET else 'misses'} the {TARGET:.0%} target)")
    print(f"\nafter: [{uptime()}]")


if __name__ == "__main__":
    main()
