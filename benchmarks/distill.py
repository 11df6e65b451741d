"""Knowledge distillation on real data: a small student trained on a few thousand real MNIST images, alone and
with ``--teacher`` (a wider network trained on the same images), several seeds; test accuracy beside each
network's parameter count, file size and CPU batch-1 latency.

    python benchmarks/distill.py                                  # ~10 min on 2 busy cores
    python benchmarks/distill.py --seeds 0 1 2 --limit 3000 --out benchmarks/results/distill-2026-12-07.json

Every run is its own ``cnnctl`` process with ``--threads 1``:
  teacher   ``cnnctl train TEACHER --dataset mnist --limit N --epochs E --seed 0`` (5,000 images held out for
            validation, then N drawn from the rest);
  alone     ``cnnctl train STUDENT --dataset mnist --limit N --epochs E --seed S``;
  distilled the same with ``--teacher TEACHER_RUN`` (defaults: --distill-temperature 4, --distill-weight 0.7).
MNIST's training images are not augmented by default, so the teacher's outputs are computed once and cached. A
student with seed S trains on the N images seed S draws (the same N alone and distilled; for S != 0 not the
teacher's own N). Test accuracy and loss are ``cnnctl eval --json`` on the 10,000 test images, which no run saw.
Latency: the median of 300 single-image forward passes after 30 warm-up ones, one CPU thread, float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cnnctl_process import cnnctl  # benchmarks/, beside this script


def train(arch: str, name: str, work: Path, args: argparse.Namespace, seed: int, *extra: object) -> Path:
    started = time.perf_counter()
    result = cnnctl("train", arch, "--dataset", "mnist", "--limit", args.limit, "--epochs", args.epochs,
                    "--threads", 1, "--seed", seed, "--out", work / "runs", "--name", name, "--no-plots", *extra)
    run = work / "runs" / name / "1"
    notes = [line for line in result.stderr.splitlines() if "teacher outputs" in line or "distilling" in line]
    (run / "bench.json").write_text(json.dumps({"seconds": time.perf_counter() - started, "notes": notes}))
    return run


def latency_ms(path: Path, repeats: int = 300) -> float:
    import torch

    import cnnctl as api

    torch.set_num_threads(1)
    model, preprocessing = api.load(path)
    inputs = torch.zeros(1, *preprocessing.input_shape)
    with torch.inference_mode():
        for _ in range(30):
            model(inputs)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def describe(run: Path) -> dict[str, object]:
    import torch

    import cnnctl as api

    best = run / "best.safetensors"
    evaluation = json.loads(cnnctl("eval", best, "--json", "--device", "cpu").stdout)
    model, _ = api.load(best)
    bench = json.loads((run / "bench.json").read_text())
    return {"run": str(run), "test_accuracy": evaluation["accuracy"], "test_loss": evaluation["loss"],
            "test_ece": evaluation["calibration"]["ece"],
            "parameters": sum(p.numel() for p in model.parameters() if isinstance(p, torch.Tensor)),
            "file_bytes": best.stat().st_size, "latency_ms": latency_ms(best), "train_seconds": bench["seconds"],
            "notes": bench["notes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="lenet", help="the teacher's architecture")
    parser.add_argument("--student", default="simplecnn", help="the student's architecture")
    parser.add_argument("--limit", type=int, default=3000, help="training images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extra", default="", help="more options for the distilled runs, e.g. '--distill-weight 0.9'")
    parser.add_argument("--teacher-extra", default="", help="more options for the teacher, e.g. '--augment shift'")
    parser.add_argument("--teacher-epochs", type=int, default=None, help=r"\[default: --epochs]")
    parser.add_argument("--student-extra", default="", help="options for both students, e.g. '--augment shift'")
    parser.add_argument("--teacher-run", default=None, help="reuse this teacher run folder instead of training one")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="distill-"))
    teacher_run = Path(args.teacher_run) if args.teacher_run else \
        train(args.teacher, f"teacher-{args.teacher}", work, args, 0, *args.teacher_extra.split(),
              *(["--epochs", args.teacher_epochs] if args.teacher_epochs else []))
    rows = {"teacher": describe(teacher_run)}
    print(json.dumps(rows["teacher"]), flush=True)
    for seed in args.seeds:
        alone = train(args.student, f"alone-s{seed}", work, args, seed, *args.student_extra.split())
        distilled = train(args.student, f"distilled-s{seed}", work, args, seed, "--teacher", teacher_run,
                          *args.student_extra.split(), *args.extra.split())
        rows[f"alone seed {seed}"] = describe(alone)
        rows[f"distilled seed {seed}"] = describe(distilled)
        print(json.dumps({key: rows[key] for key in (f"alone seed {seed}", f"distilled seed {seed}")}), flush=True)
    alone_acc = [rows[f"alone seed {s}"]["test_accuracy"] for s in args.seeds]
    distilled_acc = [rows[f"distilled seed {s}"]["test_accuracy"] for s in args.seeds]
    summary = {
        "command": " ".join(sys.argv), "teacher": args.teacher, "teacher_extra": args.teacher_extra,
        "teacher_epochs": args.teacher_epochs or args.epochs, "extra": args.extra,
        "student_extra": args.student_extra, "teacher_run": str(teacher_run), "student": args.student,
        "limit": args.limit,
        "epochs": args.epochs, "seeds": args.seeds,
        "alone_mean": statistics.mean(alone_acc), "distilled_mean": statistics.mean(distilled_acc),
        "distilled_wins": sum(d > a for a, d in zip(alone_acc, distilled_acc)), "runs": rows,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
