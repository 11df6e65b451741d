"""cnnctl's performance benchmark on the real MNIST, in one run, with the ratios docs/performance.md reports.

    python benchmarks/bench.py                    # everything (~4 min on 2 cores)
    python benchmarks/bench.py --only train       # (a) tutorial vs (b) cnnctl train vs (c) compute limit
    python benchmarks/bench.py --batch-norm       # the same legs with LeNet-5 + BatchNorm
    python benchmarks/bench.py --only folder,cifar,photos          # image folders, CIFAR ResNet-18, photos
    python benchmarks/bench.py --only folder,cifar,photos --quick  # the same at a size 2 shared cores manage

Sections:
  train    (a) the seed tutorial's pipeline, (b) ``cnnctl train lenet5 --dataset mnist`` with its defaults and
           (c) the compute limit (same model, batch, threads and memory format on in-memory tensors), each a
           fresh process, interleaved over ``--rounds`` rounds in rotating order; medians and paired ratios.
  full     ``cnnctl train lenet5 --dataset mnist --epochs 10`` end to end: wall time and test accuracy.
  predict  ``cnnctl predict`` on a folder of the 10,000 MNIST test digits written as PNG files.
  eval     ``cnnctl eval`` of the full run's checkpoint on the 10,000-image test set.
  startup  ``cnnctl --help`` and ``cnnctl list`` (these paths must not import torch).
  folder   a folder of JPEGs (colourised MNIST digits) trained with mobilenet_v3_small and tv:resnet18 at 64x64
           and 224x224: (a) the folder tutorial's PIL Dataset + DataLoader with workers, (b) ``cnnctl train
           --data``, (c) the compute limit; plus the scan and decode rate of many small files, and peak memory.
  cifar    resnet18 (small-image) on data in the CIFAR-10 python format, crop-flip augmentation: (a) the ResNet
           tutorial's hand-written Dataset, (b) ``cnnctl train resnet18 --dataset cifar10``, (c) compute limit.
  photos   ``cnnctl predict`` (and the same with reduced-size JPEG decoding off) vs a PIL +
           torchvision.transforms loop on multi-megapixel JPEGs for a 224-input model, after start-up and end to
           end (``--photos N``, ``--megapixels LOW,HIGH``, ``--image-rounds R`` override the size), a training
           folder's one-time decode of the same photos with reduced-size decoding on and off, and every
           available decoder's files/s on them (benchmarks/decoders.py).

Every leg runs in its own process so that each starts from the same state; legs alternate so that a change in
machine load (the machines we measure on are shared) hits all of them alike. Nothing is estimated: every number
printed was measured in this run. MNIST comes from ``--mirror`` (default: ``$CNNCTL_MIRROR``, else
``../shared/datasets/mnist`` next to the repository, else the official mirrors) into a scratch folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LEGS = Path(__file__).resolve().parent / "legs.py"
IMAGE_LEGS = Path(__file__).resolve().parent / "image_legs.py"
SECTIONS = ("train", "full", "predict", "eval", "startup", "folder", "cifar", "photos")
DEFAULT_SECTIONS = ("train", "full", "predict", "eval", "startup")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = subprocess.run([sys.executable, "-c", "import torch, torchvision; print(torch.__version__, "
                               "torchvision.__version__, torch.get_num_threads())"],
                              capture_output=True, text=True, env=env()).stdout.split()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": versions[0] if versions else "?", "torchvision": versions[1] if len(versions) > 1 else "?",
            "torch_threads": int(versions[2]) if len(versions) > 2 else None, "os": platform.platform()}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


_ENV: dict[str, str] = {}


def env() -> dict[str, str]:
    merged = {**os.environ, **_ENV}
    merged["PYTHONPATH"] = os.pathsep.join([str(REPO), merged.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return merged


def run(command: list[str], *, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command; return its wall time and result."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env(), cwd=REPO)
    seconds = time.perf_counter() - started
    if check and result.returncode != 0:
        raise SystemExit(f"benchmark step failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return seconds, result


def cnnctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnctl", *args]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------------------- train


def leg_tutorial(args: argparse.Namespace, data_dir: Path, work: Path) -> dict[str, Any]:
    command = [sys.executable, str(LEGS), "tutorial", "--data", str(data_dir), "--work", str(work),
               "--epochs", str(args.epochs)]
    if args.batch_norm:
        command.append("--batch-norm")
    _, result = run(command)
    return json.loads(result.stdout.strip().splitlines()[-1])


def leg_compute(args: argparse.Namespace, data_dir: Path, work: Path) -> dict[str, Any]:
    command = [sys.executable, str(LEGS), "compute", "--data", str(data_dir), "--root", str(work / "data"),
               "--epochs", str(args.epochs)]
    if args.batch_norm:
        command.append("--batch-norm")
    _, result = run(command)
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_command(epochs: int, out: Path, batch_norm: bool) -> list[str]:
    """``cnnctl train`` with its defaults; the BatchNorm variant goes through the Python API (same Trainer)."""
    if not batch_norm:
        return cnnctl("train", "lenet5", "--dataset", "mnist", "--epochs", str(epochs), "--out", str(out), "--quiet")
    code = (f"import cnnctl; r = cnnctl.train(arch='lenet5', dataset='mnist', epochs={epochs}, out={str(out)!r}, "
            "arch_args={'batch_norm': True}); print('run folder:', r.run_dir)")
    return [sys.executable, "-c", code]


def run_cnnctl_train(epochs: int, work: Path, batch_norm: bool) -> dict[str, Any]:
    wall, result = run(train_command(epochs, work / "runs", batch_norm))
    match = re.search(r"run folder: (.+)", result.stdout)
    if not match:
        raise SystemExit(f"could not find the run folder in:\n{result.stdout}")
    run_dir = Path(match.group(1).strip())
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    results = json.loads((run_dir / "results.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    return {"leg": "cnnctl", "epoch_s": [float(r["epoch_time_s"]) for r in rows],
            "val_s": None, "images": round(float(rows[0]["images_per_s"]) * float(rows[0]["epoch_time_s"])),
            "wall_s": wall, "test_acc": results["test_acc"], "run_dir": str(run_dir),
            "batch_size": config["batch_size"], "threads": config.get("threads"),
            "channels_last": config.get("channels_last"), "batch_norm": batch_norm}


def leg_cnnctl(args: argparse.Namespace, data_dir: Path, work: Path) -> dict[str, Any]:
    return run_cnnctl_train(args.epochs, work, args.batch_norm)


def throughput(leg: dict[str, Any]) -> float:
    return leg["images"] / median(leg["epoch_s"])


def section_train(args: argparse.Namespace, data_dir: Path, work: Path, report: dict[str, Any]) -> None:
    legs = {"a": leg_tutorial, "b": leg_cnnctl, "c": leg_compute}
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(args.rounds):
        order = "abc"[number % 3:] + "abc"[:number % 3]
        results: dict[str, dict[str, Any]] = {}
        for key in order:
            results[key] = legs[key](args, data_dir, work)
            log(f"  round {number + 1}/{args.rounds} leg {key}: {throughput(results[key]):,.0f} images/s "
                f"(epoch {median(results[key]['epoch_s']):.2f}s, load {load_average()})")
        rounds.append(results)
    summary: dict[str, Any] = {"rounds": rounds}
    for key in "abc":
        epochs = [s for r in rounds for s in r[key]["epoch_s"]]
        images = rounds[0][key]["images"]
        summary[key] = {"epoch_s": median(epochs), "images": images, "images_per_s": images / median(epochs),
                        "batch_size": rounds[0][key]["batch_size"], "threads": rounds[0][key].get("threads"),
                        "channels_last": rounds[0][key].get("channels_last")}
    # ratios of throughput (time for the same number of images), paired within each round, then the median
    summary["a_over_b"] = median([throughput(r["b"]) / throughput(r["a"]) for r in rounds])
    summary["b_over_c"] = median([throughput(r["c"]) / throughput(r["b"]) for r in rounds])
    report["train"] = summary


# ----------------------------------------------------------------------------------------------------------- full


def section_full(args: argparse.Namespace, data_dir: Path, work: Path, report: dict[str, Any]) -> None:
    runs = [run_cnnctl_train(10, work, args.batch_norm) for _ in range(args.full_runs)]
    for result in runs:
        log(f"  10 epochs: {result['wall_s']:.1f}s wall, test accuracy {result['test_acc']:.2%}")
    best = min(runs, key=lambda r: r["wall_s"])
    report["full"] = {
        "command": "cnnctl train lenet5 --dataset mnist --epochs 10",
        "wall_s": median([r["wall_s"] for r in runs]), "test_acc": median([r["test_acc"] for r in runs]),
        "train_epoch_s": median([s for r in runs for s in r["epoch_s"]]), "runs": len(runs),
        "images": best["images"], "checkpoint": str(Path(best["run_dir"]) / "best.safetensors"),
    }


def checkpoint_for(report: dict[str, Any], work: Path) -> str:
    if "full" in report:
        return report["full"]["checkpoint"]
    log("  (training a 1-epoch checkpoint for predict/eval)")
    return str(Path(run_cnnctl_train(1, work, False)["run_dir"]) / "best.safetensors")


# -------------------------------------------------------------------------------------------------------- predict


def write_pngs(work: Path) -> tuple[Path, list[int]]:
    """The 10,000 MNIST test digits as PNG files (untimed); names carry the label for an accuracy check."""
    folder = work / "png"
    code = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
import warnings; warnings.filterwarnings("ignore")
from torchvision.io import encode_png
from cnnctl.data.splits import load_split
from cnnctl.registry import get_dataset_spec
test = load_split(get_dataset_spec("mnist"), "test", root={str(work / 'data')!r})
folder = Path({str(folder)!r}); folder.mkdir(parents=True, exist_ok=True)
for i in range(len(test)):
    (folder / f"{{i:05d}}_{{int(test.labels[i])}}.png").write_bytes(encode_png(test.images[i]).numpy().tobytes())
"""
    if not folder.is_dir() or len(list(folder.iterdir())) != 10_000:
        run([sys.executable, "-c", code])
    labels = [int(p.stem.split("_")[1]) for p in sorted(folder.iterdir())]
    return folder, labels


def section_predict(args: argparse.Namespace, data_dir: Path, work: Path, report: dict[str, Any]) -> None:
    checkpoint = checkpoint_for(report, work)
    folder, labels = write_pngs(work)
    runs = []
    for _ in range(args.repeats):
        output = work / "predictions.csv"
        wall, result = run(cnnctl("predict", checkpoint, str(folder), "--output", str(output)))
        line = result.stderr.strip().splitlines()[-1]
        match = re.search(r"in ([\d.]+)s \(([\d,]+) images/s; decode ([\d.]+)s, inference ([\d.]+)s\)", line)
        if not match:
            raise SystemExit(f"unexpected predict output: {line}")
        rows = list(csv.DictReader(output.open()))
        correct = sum(int(row["label"]) == int(Path(row["path"]).stem.split("_")[1]) for row in rows)
        runs.append({"wall_s": wall, "predict_s": float(match.group(1)), "decode_s": float(match.group(3)),
                     "inference_s": float(match.group(4)), "accuracy": correct / len(rows), "images": len(rows)})
        log(f"  predict: {wall:.2f}s wall, {line}")
    images = runs[0]["images"]
    report["predict"] = {
        "command": "cnnctl predict CHECKPOINT png/ --output predictions.csv", "images": images,
        "wall_s": median([r["wall_s"] for r in runs]), "predict_s": median([r["predict_s"] for r in runs]),
        "decode_s": median([r["decode_s"] for r in runs]), "inference_s": median([r["inference_s"] for r in runs]),
        "accuracy": runs[0]["accuracy"], "runs": len(runs),
    }
    summary = report["predict"]
    summary["images_per_s_end_to_end"] = images / summary["wall_s"]
    summary["images_per_s_after_start"] = images / summary["predict_s"]
    summary["decode_images_per_s"] = images / summary["decode_s"]
    summary["inference_images_per_s"] = images / summary["inference_s"]


# ----------------------------------------------------------------------------------------------- eval and startup


def section_eval(args: argparse.Namespace, data_dir: Path, work: Path, report: dict[str, Any]) -> None:
    checkpoint = checkpoint_for(report, work)
    bare, torch_import, evals, inside = [], [], [], []
    inside_code = ("import time, json, sys; s = time.perf_counter(); "
                   "from cnnctl.engine.evaluate import evaluate_checkpoint; "
                   f"r, _ = evaluate_checkpoint({checkpoint!r}); "
                   "print(json.dumps({'s': time.perf_counter() - s, 'acc': r.top1}))")
    for _ in range(args.repeats):
        bare.append(run([sys.executable, "-c", "pass"])[0])
        torch_import.append(run([sys.executable, "-c", "import torch"])[0])
        wall, result = run(cnnctl("eval", checkpoint, "--json"))
        evals.append(wall)
        accuracy = json.loads(result.stdout)["accuracy"]
        inside.append(json.loads(run([sys.executable, "-c", inside_code])[1].stdout)["s"])
        log(f"  eval: {wall:.2f}s wall (accuracy {accuracy:.2%})")
    report["eval"] = {"command": "cnnctl eval CHECKPOINT --json", "wall_s": median(evals),
                      "python_s": median(bare), "import_torch_s": median(torch_import),
                      "in_process_s": median(inside), "accuracy": accuracy, "runs": len(evals)}


def section_startup(args: argparse.Namespace, data_dir: Path, work: Path, report: dict[str, Any]) -> None:
    timings: dict[str, list[float]] = {"--help": [], "list": []}
    probe = ("import sys, runpy; sys.argv = ['cnnctl', %r]\n"
             "try:\n    runpy.run_module('cnnctl', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    for _ in range(args.repeats * 2):
        for name in timings:
            timings[name].append(run(cnnctl(name))[0])
    imports = {name: run([sys.executable, "-c", probe % name])[1].stderr.strip().splitlines()[-1]
               for name in timings}
    report["startup"] = {name: {"wall_s": median(values), "imports_torch": imports[name] == "TORCH"}
                         for name, values in timings.items()}
    for name, values in timings.items():
        log(f"  cnnctl {name}: {median(values):.3f}s ({imports[name]})")


# ------------------------------------------------------------------------------------------ folder, cifar, photos

FULL_SIZES: dict[str, Any] = {"folder_files": 5000, "folder_sizes": [64, 224],
                              "folder_archs": ["mobilenet_v3_small", "tv:resnet18"], "folder_epochs": 2,
                              "scan_files": 50_000, "cifar_train": 50_000, "cifar_epochs": 1, "photos": 2000,
                              "megapixels": "1,12", "rounds": 3, "batch_size": 64, "cifar_batch_size": 128}
QUICK_SIZES: dict[str, Any] = {"folder_files": 1000, "folder_sizes": [64], "folder_archs": ["mobilenet_v3_small"],
                               "folder_epochs": 2, "scan_files": 5000, "cifar_train": 512, "cifar_epochs": 1,
                               "photos": 200, "megapixels": "2,4", "rounds": 1, "batch_size": 64,
                               "cifar_batch_size": 128}


def image_leg(name: str, *options: str) -> dict[str, Any]:
    _, result = run([sys.executable, str(IMAGE_LEGS), name, *options])
    return json.loads(result.stdout.strip().splitlines()[-1])


PEAK_PROBE = ("import atexit, resource, runpy, sys\n"
              "atexit.register(lambda: print('PEAK_RSS_MIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"
              " / 1024, file=sys.stderr))\n"
              "sys.argv = ['cnnctl', *sys.argv[1:]]\nrunpy.run_module('cnnctl', run_name='__main__')")


def cnnctl_train_leg(arguments: list[str], work: Path) -> dict[str, Any]:
    """``cnnctl train ARGS`` in a fresh process: per-epoch seconds (metrics.csv), wall time and peak memory."""
    wall, result = run([sys.executable, "-c", PEAK_PROBE, "train", *arguments, "--out", str(work / "runs"),
                        "--quiet", "--no-plots"])
    match = re.search(r"run folder: (.+)", result.stdout)
    if not match:
        raise SystemExit(f"could not find the run folder in:\n{result.stdout}\n{result.stderr[-2000:]}")
    run_dir = Path(match.group(1).strip())
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    epochs = [float(r["epoch_time_s"]) for r in rows]
    peak = re.search(r"PEAK_RSS_MIB ([\d.]+)", result.stderr)
    return {"leg": "cnnctl", "epoch_s": epochs, "wall_s": wall,
            "images": round(float(rows[0]["images_per_s"]) * epochs[0]), "run_dir": str(run_dir),
            # everything before epoch 2: start-up, scan, decode into the cache, epoch 1 (and the final test)
            "first_epoch_s": wall - sum(epochs[1:]), "peak_rss_mib": float(peak.group(1)) if peak else None}


def interleave(legs: dict[str, Any], rounds: int, label: str) -> list[dict[str, dict[str, Any]]]:
    results = []
    for number in range(rounds):
        keys = list(legs)
        order = keys[number % len(keys):] + keys[:number % len(keys)]
        measured = {}
        for key in order:
            measured[key] = legs[key]()
            log(f"  {label} round {number + 1}/{rounds} leg {key}: epochs "
                f"{', '.join(f'{s:.1f}s' for s in measured[key]['epoch_s'])} (load {load_average()})")
        results.append(measured)
    return results


def train_summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians per leg and the paired ratios (time per image, within each round, then the median)."""
    def rate(leg: dict[str, Any], epoch: int) -> float:
        seconds = leg["epoch_s"][min(epoch, len(leg["epoch_s"]) - 1)]
        if epoch == 0 and "first_epoch_s" in leg:
            seconds = leg["first_epoch_s"]
        return leg["images"] / seconds

    summary: dict[str, Any] = {"legs": {}}
    for key in rounds[0]:
        legs = [r[key] for r in rounds]
        summary["legs"][key] = {
            "images": legs[0]["images"], "epoch1_s": median([leg.get("first_epoch_s", leg["epoch_s"][0])
                                                             for leg in legs]),
            "later_s": median([s for leg in legs for s in leg["epoch_s"][1:]] or [leg["epoch_s"][0] for leg in legs]),
            "peak_rss_mib": median([leg["peak_rss_mib"] for leg in legs if leg.get("peak_rss_mib")]),
        }
    summary["b_over_a_epoch1"] = median([rate(r["b"], 0) / rate(r["a"], 0) for r in rounds])
    summary["b_over_a_later"] = median([rate(r["b"], 1) / rate(r["a"], 1) for r in rounds])
    summary["b_time_over_c_later"] = median([rate(r["c"], 1) / rate(r["b"], 1) for r in rounds])
    return summary


def section_folder(args: argparse.Namespace, data_dir: Path, work: Path, report: dict[str, Any]) -> None:
    sizes = report["sizes"]
    mnist_root = str(work / "data")
    report["folder"] = {}
    for size in sizes["folder_sizes"]:
        folder = work / f"folder-{sizes['folder_files']}-{size}"  # a kept --work may hold other sizes
        if not folder.is_dir():
            made = image_leg("make-folder", "--mnist-root", mnist_root, "--out", str(folder),
                             "--files", str(sizes["folder_files"]), "--size", str(size))
            log(f"  wrote {made['files']:,} JPEGs at {size}x{size} ({made['bytes'] / 2**20:.1f} MiB) in {folder}")
        epochs, batch = str(sizes["folder_epochs"]), str(sizes["batch_size"])
        for arch in sizes["folder_archs"]:
            common = ["--data", str(folder), "--arch", arch, "--size", str(size), "--epochs", epochs,
                      "--batch-size", batch]
            legs = {
                "a": lambda common=common: image_leg("folder-tutorial", *common),
                "b": lambda arch=arch, folder=folder, size=size, epochs=epochs, batch=batch: cnnctl_train_leg(
                    [arch, "--data", str(folder), "--img-size", str(size), "--epochs", epochs, "--batch-size", batch,
                     "--val-split", "0"], work),
                "c": lambda common=common: image_leg("folder-compute", *common),
                # the same run streamed: decoded by worker processes every epoch, as a folder over the budget is
                "s": lambda arch=arch, folder=folder, size=size, epochs=epochs, batch=batch: cnnctl_train_leg(
                    [arch, "--data", str(folder), "--img-size", str(size), "--epochs", epochs, "--batch-size", batch,
                     "--val-split", "0", "--cache", "none"], work),
            }
            rounds = interleave(legs, sizes["rounds"], f"{arch} {size}x{size}")
            summary = train_summary(rounds)
            def last_rate(leg: dict[str, Any]) -> float:  # the streamed leg decodes in every epoch alike
                return leg["images"] / leg["epoch_s"][-1]

            summary["s_over_b_later"] = median([last_rate(r["s"]) / last_rate(r["b"]) for r in rounds])
            summary["s_over_a_later"] = median([last_rate(r["s"]) / last_rate(r["a"]) for r in rounds])
            report["folder"][f"{arch} {size}x{size}"] = summary
    scan_folder = work / f"folder-scan-{sizes['scan_files']}"
    if not scan_folder.is_dir():
        image_leg("make-folder", "--mnist-root", mnist_root, "--out", str(scan_folder), "--files",
                  str(sizes["scan_files"]), "--size", "32")
    code = ("import json, resource, time\nfrom pathlib import Path\n"
            "from cnnctl.data.folder import scan_folder, decode_files\n"
            f"root = Path({str(scan_folder / 'train')!r})\n"
            "s = time.perf_counter(); scan = scan_folder(root); scan_s = time.perf_counter() - s\n"
            "files = [path for path, _ in scan.splits['train']]\n"
            "s = time.perf_counter(); decoded = decode_files(files, (32, 32)); decode_s = time.perf_counter() - s\n"
            "print(json.dumps({'files': len(files), 'scan_s': scan_s, 'decode_s': decode_s,"
            " 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    _, result = run([sys.executable, "-c", code])
    scan = json.loads(result.stdout.strip().splitlines()[-1])
    log(f"  scan {scan['files']:,} files {scan['scan_s']:.2f}s, decode {scan['decode_s']:.2f}s")
    report["folder_scan"] = scan


def section_cifar(args: argparse.Namespace, data_dir: Path, work: Path, report: dict[str, Any]) -> None:
    sizes = report["sizes"]
    root = work / "data"
    written = root / "cifar10" / "bench-train-images.txt"  # a kept --work may hold another size's archive
    if not (root / "cifar10" / "cifar-10-python.tar.gz").exists() or \
            not written.exists() or written.read_text().strip() != str(sizes["cifar_train"]):
        shutil.rmtree(root / "cifar10", ignore_errors=True)  # with what cnnctl extracted from the old archive
        image_leg("make-cifar", "--mnist-root", str(root), "--out", str(root), "--train", str(sizes["cifar_train"]),
                  "--test", "100")
        written.write_text(f"{sizes['cifar_train']}\n")
    epochs, batch = str(sizes["cifar_epochs"]), str(sizes["cifar_batch_size"])
    legs = {
        "a": lambda: image_leg("cifar-tutorial", "--data", str(root), "--epochs", epochs, "--batch-size", batch),
        "b": lambda: cnnctl_train_leg(["resnet18", "--dataset", "cifar10", "--epochs", epochs, "--batch-size", batch,
                                       "--augment", "crop-flip", "--val-split", "0"], work),
        "c": lambda: image_leg("cifar-compute", "--data", str(root), "--images", str(sizes["cifar_train"]),
                               "--epochs", epochs, "--batch-size", batch),
    }
    rounds = interleave(legs, sizes["rounds"], "resnet18 cifar")
    summary = train_summary(rounds)
    # CIFAR is in memory from the start: compare training epochs, not cnnctl's start-up
    summary["b_over_a"] = median([(r["b"]["images"] / r["b"]["epoch_s"][0]) / (r["a"]["images"] / r["a"]["epoch_s"][0])
                                  for r in rounds])
    summary["b_time_over_c"] = median([(r["c"]["images"] / r["c"]["epoch_s"][0]) /
                                       (r["b"]["images"] / r["b"]["epoch_s"][0]) for r in rounds])
    report["cifar"] = summary


# ``cnnctl predict`` with reduced-size JPEG decoding switched off (the module switch in cnnctl/data/images.py)
FULL_DECODE_PREDICT = ("import runpy, sys\nimport cnnctl.data.images as images\nimages.REDUCED_JPEG_DECODE = False\n"
                       "sys.argv = ['cnnctl', *sys.argv[1:]]\nrunpy.run_module('cnnctl', run_name='__main__')")
PREDICT_LINE = re.compile(r"in ([\d.]+)s \(([\d,]+) images/s; decode ([\d.]+)s, inference ([\d.]+)s\)")


def photo_predict_leg(checkpoint: Path, photos: Path, output: Path, *, reduced: bool) -> dict[str, Any]:
    """``cnnctl predict`` in a fresh process: wall time, the time after start-up it reports, decode and inference."""
    prefix = cnnctl() if reduced else [sys.executable, "-c", FULL_DECODE_PREDICT]
    wall, result = run([*prefix, "predict", str(checkpoint), str(photos), "--output", str(output)])
    line = result.stderr.strip().splitlines()[-1]
    match = PREDICT_LINE.search(line)
    if not match:
        raise SystemExit(f"unexpected predict output: {line}")
    return {"wall_s": wall, "predict_s": float(match.group(1)), "decode_s": float(match.group(3)),
            "inference_s": float(match.group(4))}


def section_photos(args: argparse.Namespace, data_dir: Path, work: Path, report: dict[str, Any]) -> None:
    """Rounds of three fresh processes in rotating order: the PIL + transforms loop, ``cnnctl predict`` and
    ``cnnctl predict`` with full-size decoding; ratios paired within a round, after start-up and end to end."""
    sizes = report["sizes"]
    photos, tiny = work / f"photos-{sizes['photos']}-{sizes['megapixels'].replace(',', '-')}", work / "folder-tiny-224"
    if not photos.is_dir():
        made = image_leg("make-photos", "--mnist-root", str(work / "data"), "--out", str(photos), "--count",
                         str(sizes["photos"]), "--megapixels", sizes["megapixels"])
        log(f"  wrote {made['photos']:,} photos, {made['megapixels_mean']:.1f} MP on average, "
            f"{made['bytes'] / 2**20:.0f} MiB")
    if not tiny.is_dir():
        image_leg("make-folder", "--mnist-root", str(work / "data"), "--out", str(tiny), "--files", "100",
                  "--size", "224")
    checkpoint = Path(cnnctl_train_leg(["mobilenet_v3_small", "--data", str(tiny), "--img-size", "224", "--epochs",
                                        "1", "--batch-size", "50", "--val-split", "0"], work)["run_dir"])
    checkpoint = checkpoint / "best.safetensors"
    legs = {
        "loop": lambda: {**image_leg_timed("predict-tutorial", "--checkpoint", str(checkpoint), "--data",
                                           str(photos))},
        "cnnctl": lambda: photo_predict_leg(checkpoint, photos, work / "photo-predictions.csv", reduced=True),
        "full": lambda: photo_predict_leg(checkpoint, photos, work / "photo-predictions-full.csv", reduced=False),
    }
    rounds = []
    for number in range(sizes["rounds"]):
        keys = list(legs)
        measured = {}
        for key in keys[number % len(keys):] + keys[:number % len(keys)]:
            measured[key] = legs[key]()
            log(f"  round {number + 1} {key}: {measured[key]['wall_s']:.1f}s wall, "
                f"{measured[key].get('predict_s', measured[key].get('seconds')):.1f}s after start-up "
                f"(load {load_average()})")
        rounds.append(measured)
    count = sizes["photos"]

    def paired(mine: str, key: str) -> float:  # loop time / cnnctl time, within each round
        loop_key = "seconds" if key == "predict_s" else "wall_s"
        return median([r["loop"][loop_key] / r[mine][key] for r in rounds])

    folder_decode = photo_folder_decode(photos, sizes["rounds"])
    decoders = image_leg("decoders", "--data", str(photos), "--size", "224", "--files", str(min(count, 30)),
                         "--rounds", str(sizes["rounds"]), "--threads", "1")
    report["photos"] = {
        "images": count, "megapixels": sizes["megapixels"], "rounds": rounds, "load_after": load_average(),
        "loop_images_per_s": count / median([r["loop"]["seconds"] for r in rounds]),
        "loop_wall_s": median([r["loop"]["wall_s"] for r in rounds]),
        **{f"{name}_{key}": median([r[name][key] for r in rounds]) for name in ("cnnctl", "full")
           for key in ("wall_s", "predict_s", "decode_s", "inference_s")},
        "ratio_after_start": paired("cnnctl", "predict_s"), "ratio_end_to_end": paired("cnnctl", "wall_s"),
        "full_ratio_after_start": paired("full", "predict_s"), "full_ratio_end_to_end": paired("full", "wall_s"),
        "reduced_over_full_after_start": median([r["full"]["predict_s"] / r["cnnctl"]["predict_s"] for r in rounds]),
        "decoders": decoders, "folder_decode": folder_decode,
    }


# The decode a training folder of these photos does once (epoch 1, or every epoch when streamed): decode_files
# into 224x224 with its default workers, reduced-size JPEG decoding on or off, in a fresh process.
FOLDER_DECODE = ("import json, sys, time\nfrom pathlib import Path\nimport cnnctl.data.images as images\n"
                 "from cnnctl.data.folder import decode_files\n"
                 "images.REDUCED_JPEG_DECODE = sys.argv[2] == 'reduced'\n"
                 "files = sorted(Path(sys.argv[1]).glob('*.jpg'))\n"
                 "decode_files(files[:2], (224, 224), workers=0)  # imports, first-call set-up\n"
                 "s = time.perf_counter(); decoded = decode_files(files, (224, 224))\n"
                 "seconds = time.perf_counter() - s\n"
                 "print(json.dumps({'files': len(decoded.kept), 'seconds': seconds}))")


def photo_folder_decode(photos: Path, rounds: int) -> dict[str, Any]:
    """Files/s of the folder decode on the photos, reduced-size decoding on and off, rounds in rotating order."""
    rates: dict[str, list[float]] = {"reduced": [], "full": []}
    for number in range(rounds):
        for mode in (("reduced", "full") if number % 2 == 0 else ("full", "reduced")):
            _, result = run([sys.executable, "-c", FOLDER_DECODE, str(photos), mode])
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            rates[mode].append(measured["files"] / measured["seconds"])
            log(f"  folder decode of the photos, {mode}: {rates[mode][-1]:.1f} files/s")
    return {"files_per_s": {mode: median(values) for mode, values in rates.items()},
            "reduced_over_full": median([a / b for a, b in zip(rates["reduced"], rates["full"])])}


def image_leg_timed(name: str, *options: str) -> dict[str, Any]:
    """:func:`image_leg` plus the wall time of its process (start-up included)."""
    wall, result = run([sys.executable, str(IMAGE_LEGS), name, *options])
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "wall_s": wall}


def render_images(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    names = {"a": "(a) tutorial (PIL Dataset, DataLoader)", "b": "(b) cnnctl train", "c": "(c) compute limit",
             "s": "(s) cnnctl train --cache none (streamed)"}
    if report.get("sections") and any(s in report for s in ("folder", "cifar", "photos")):
        lines += ["", f"sizes: {json.dumps(report['sizes'])}"]
    for name, summary in report.get("folder", {}).items():
        lines += ["", f"folder of JPEGs, {name}, batch {report['sizes']['batch_size']}, "
                      f"median of {report['sizes']['rounds']} round(s):",
                  f"{'leg':<42} {'images':>7} {'epoch 1 s':>10} {'later s/epoch':>14} {'peak MiB':>9}"]
        for key, leg in summary["legs"].items():
            lines.append(f"{names[key]:<42} {leg['images']:>7,} {leg['epoch1_s']:>10.1f} {leg['later_s']:>14.1f} "
                         f"{leg['peak_rss_mib']:>9,.0f}")
        lines.append(f"b/a epoch 1 = {summary['b_over_a_epoch1']:.2f}x (target >= 2; cnnctl's includes start-up, "
                     "scan, decode and the final test)")
        lines.append(f"b/a epoch 2+ = {summary['b_over_a_later']:.2f}x (target >= 3)")
        lines.append(f"b/c epoch 2+ = {summary['b_time_over_c_later']:.3f} (time per image; target <= 1.15)")
        if "s_over_b_later" in summary:
            lines.append(f"streamed, last epoch: s/b = {summary['s_over_b_later']:.2f}x the cached rate, "
                         f"s/a = {summary['s_over_a_later']:.2f}x the tutorial's (images/s)")
    if "folder_scan" in report:
        s = report["folder_scan"]
        lines.append(f"scan {s['files']:,} small JPEGs: {s['files'] / s['scan_s']:,.0f} files/s; decode into memory: "
                     f"{s['files'] / s['decode_s']:,.0f} files/s; peak {s['peak_rss_mib']:,.0f} MiB")
    if "cifar" in report:
        c = report["cifar"]
        lines += ["", "CIFAR-10 format, resnet18 (small-image), crop-flip, batch "
                      f"{report['sizes']['cifar_batch_size']}, median of {report['sizes']['rounds']} round(s):",
                  f"{'leg':<42} {'images':>7} {'s/epoch':>10} {'images/s':>9}"]
        for key, leg in c["legs"].items():
            seconds = leg["epoch1_s"] if key != "b" else c["legs"]["b"]["later_s"]
            lines.append(f"{names[key]:<42} {leg['images']:>7,} {seconds:>10.1f} {leg['images'] / seconds:>9,.1f}")
        lines.append(f"b/a = {c['b_over_a']:.2f}x (target >= 1.5)")
        lines.append(f"b/c = {c['b_time_over_c']:.3f} (time per image; target <= 1.10)")
    if "photos" in report:
        p = report["photos"]
        count = p["images"]
        lines += ["", f"predict, {count:,} JPEG photos of {p['megapixels'].replace(',', '-')} MP, mobilenet_v3_small "
                      f"at 224x224, median of {len(p['rounds'])} round(s) (load after: {p['load_after']}):",
                  f"{'leg':<46} {'wall s':>7} {'after start-up s':>17} {'images/s':>9} {'decode s':>9} "
                  f"{'inference s':>12}",
                  f"{'PIL + torchvision.transforms loop':<46} {p['loop_wall_s']:>7.1f} "
                  f"{count / p['loop_images_per_s']:>17.1f} {p['loop_images_per_s']:>9.1f}"]
        for name, label in (("cnnctl", "cnnctl predict"), ("full", "cnnctl predict, reduced JPEG decode off")):
            lines.append(f"{label:<46} {p[f'{name}_wall_s']:>7.1f} {p[f'{name}_predict_s']:>17.1f} "
                         f"{count / p[f'{name}_predict_s']:>9.1f} {p[f'{name}_decode_s']:>9.1f} "
                         f"{p[f'{name}_inference_s']:>12.1f}")
        lines += [f"cnnctl/loop = {p['ratio_after_start']:.2f}x after start-up, {p['ratio_end_to_end']:.2f}x end "
                  "to end (both processes' wall time; target >= 3)",
                  f"reduced JPEG decode off: {p['full_ratio_after_start']:.2f}x / {p['full_ratio_end_to_end']:.2f}x; "
                  f"reduced decoding makes predict {p['reduced_over_full_after_start']:.2f}x faster after start-up",
                  f"folder decode of these photos into 224x224 (training's epoch-1 decode, default workers): "
                  f"{p['folder_decode']['files_per_s']['reduced']:.1f} files/s, reduced JPEG decode off "
                  f"{p['folder_decode']['files_per_s']['full']:.1f} files/s "
                  f"({p['folder_decode']['reduced_over_full']:.2f}x)",
                  f"decoders, files/s to a 224x224 RGB tensor ({p['decoders']['files']} photos, one thread, "
                  "ratio to torchvision.io):"]
        for name, rate in p["decoders"]["files_per_s"].items():
            lines.append(f"  {name:<50} {rate:>7.1f} {p['decoders']['vs_torchvision'][name]:>6.2f}x")
    return lines


# ---------------------------------------------------------------------------------------------------------- report


def render(report: dict[str, Any]) -> str:
    lines = []
    m = report["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']} "
                 f"({m['torch_threads']} threads), torchvision {m['torchvision']}")
    lines.append(f"load average before/after: {report['load_before']} / {report['load_after']}")
    if "train" in report:
        t = report["train"]
        model = "LeNet-5 + BatchNorm" if report["batch_norm"] else "LeNet-5 (cnnctl's lenet5, no BatchNorm)"
        lines.append("")
        lines.append(f"training, {model}, {report['epochs']} epoch(s) x {report['rounds']} rounds, median:")
        lines.append(f"{'leg':<48} {'batch':>5} {'images':>7} {'s/epoch':>8} {'images/s':>9}")
        names = {"a": "(a) tutorial: torchvision MNIST + PIL, DataLoader",
                 "b": "(b) cnnctl train (defaults)",
                 "c": "(c) compute limit (in-memory tensors)"}
        for key in "abc":
            leg = t[key]
            lines.append(f"{names[key]:<48} {leg['batch_size']:>5} {leg['images']:>7,} {leg['epoch_s']:>8.2f} "
                         f"{leg['images_per_s']:>9,.0f}")
        lines.append(f"a/b = {t['a_over_b']:.2f}x   (cnnctl's speed-up over the tutorial; target >= 3)")
        lines.append(f"b/c = {t['b_over_c']:.3f}   (cnnctl's time per image over the compute limit; target <= 1.15)")
    if "full" in report:
        f = report["full"]
        lines.append("")
        lines.append(f"{f['command']}: {f['wall_s']:.1f}s wall end to end (target <= 60), test accuracy "
                     f"{f['test_acc']:.2%} (target >= 99.0%), training {f['train_epoch_s']:.2f}s/epoch "
                     f"({f['images'] / f['train_epoch_s']:,.0f} images/s); median of {f['runs']}")
    if "predict" in report:
        p = report["predict"]
        lines.append("")
        lines.append(f"cnnctl predict, {p['images']:,} PNG files: {p['wall_s']:.2f}s wall end to end "
                     f"({p['images_per_s_end_to_end']:,.0f} images/s, target >= 2,000); after start-up "
                     f"{p['predict_s']:.2f}s ({p['images_per_s_after_start']:,.0f} images/s): decode "
                     f"{p['decode_s']:.2f}s ({p['decode_images_per_s']:,.0f}/s), inference {p['inference_s']:.2f}s "
                     f"({p['inference_images_per_s']:,.0f}/s); accuracy {p['accuracy']:.2%}")
    if "eval" in report:
        e = report["eval"]
        torch_s = e["import_torch_s"] - e["python_s"]
        lines.append(f"cnnctl eval, 10,000 test images: {e['wall_s']:.2f}s wall end to end (target <= 2); of "
                     f"which Python start {e['python_s']:.2f}s, import torch {torch_s:.2f}s; "
                     f"load + evaluate in process {e['in_process_s']:.2f}s")
    if "startup" in report:
        s = report["startup"]
        lines.append("cnnctl --help {:.3f}s, cnnctl list {:.3f}s (target <= 0.3; torch imported: {}, {})".format(
            s["--help"]["wall_s"], s["list"]["wall_s"], s["--help"]["imports_torch"], s["list"]["imports_torch"]))
    lines.extend(render_images(report))
    return "\n".join(lines)


def default_mirror() -> str | None:
    if os.environ.get("CNNCTL_MIRROR"):
        return os.environ["CNNCTL_MIRROR"]
    for shared in (REPO.parent / "shared", REPO / "shared"):
        if (shared / "datasets" / "mnist").is_dir():
            return str(shared / "datasets" / "mnist")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated sections: {', '.join(SECTIONS)} [default: %(default)s]")
    parser.add_argument("--quick", action="store_true",
                        help="folder/cifar/photos at a size a shared 2-core machine manages (QUICK_SIZES)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per leg per round (train section)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three legs")
    parser.add_argument("--image-rounds", dest="rounds_images", type=int,
                        help="rounds of the folder/cifar/photos legs (default: the size's)")
    parser.add_argument("--full-runs", type=int, default=1, help="10-epoch end-to-end runs")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the predict/eval/startup timings")
    parser.add_argument("--batch-norm", action="store_true", help="LeNet-5 + BatchNorm in every leg")
    parser.add_argument("--mirror", default=default_mirror(), help="MNIST folder or URL [default: %(default)s]")
    parser.add_argument("--work", help="scratch folder (kept); default: a temporary folder (removed)")
    parser.add_argument("--json", dest="json_path", help="also write the full results here")
    parser.add_argument("--photos", type=int, help="photos in the photos section (default: the size's)")
    parser.add_argument("--megapixels", help="LOW,HIGH megapixels of the photos (default: the size's)")
    parser.add_argument("--cifar-images", dest="cifar_train", type=int,
                        help="training images in the cifar section (default: the size's)")
    parser.add_argument("--folder-files", dest="folder_files", type=int,
                        help="JPEGs in each folder of the folder section (default: the size's)")
    parser.add_argument("--folder-sizes", dest="folder_sizes", type=lambda text: [int(v) for v in text.split(",")],
                        help="comma-separated image sizes of the folder section, e.g. 64,224 (default: the size's)")
    parser.add_argument("--folder-archs", dest="folder_archs", type=lambda text: text.split(","),
                        help="comma-separated networks of the folder section (default: the size's)")
    parser.add_argument("--scan-files", dest="scan_files", type=int,
                        help="small JPEGs in the scan and decode-rate measurement (default: the size's)")
    args = parser.parse_args()
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    with tempfile.TemporaryDirectory(prefix="cnnctl-bench-") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        _ENV["CNNCTL_DATA"] = str(work / "data")
        if args.mirror:
            _ENV["CNNCTL_MIRROR"] = args.mirror
        log(f"preparing MNIST in {work / 'data'} (from {args.mirror or 'the official mirrors'})")
        run(cnnctl("download", "mnist"))
        data_dir = work / "data" / "mnist"
        report: dict[str, Any] = {"machine": machine(), "load_before": load_average(), "epochs": args.epochs,
                                  "rounds": args.rounds, "batch_norm": args.batch_norm, "sections": sections}
        report["sizes"] = dict(QUICK_SIZES if args.quick else FULL_SIZES)
        overrides = ("photos", "megapixels", "cifar_train", "folder_files", "folder_sizes", "folder_archs",
                     "scan_files")
        report["sizes"].update({key: getattr(args, key) for key in overrides if getattr(args, key)})
        if args.rounds_images:
            report["sizes"]["rounds"] = args.rounds_images
        functions = {"train": section_train, "full": section_full, "predict": section_predict,
                     "eval": section_eval, "startup": section_startup, "folder": section_folder,
                     "cifar": section_cifar, "photos": section_photos}
        for name in SECTIONS:
            if name in sections:
                log(f"[{name}]")
                functions[name](args, data_dir, work, report)
        report["load_after"] = load_average()
        text = render(report)
        print(text)
        if args.json_path:
            Path(args.json_path).write_text(json.dumps({**report, "text": text}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
