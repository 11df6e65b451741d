"""Small and imbalanced image folders cut from the real MNIST: test accuracy of every small-image architecture
with cnnctl's defaults, against the previous defaults, in one run.

    python benchmarks/smalldata.py                 # everything (~25 min on 2 busy cores)
    python benchmarks/smalldata.py --only balanced --archs lenet5 mobilenet_v3_small

Sections:
  balanced   4 digits (0-3), 200 training + 50 test images each, 28x28 grey PNGs; ``cnnctl train ARCH --data DIR
             --epochs 5`` with the defaults ("now") and with the previous ones ("before": ``--batch-size 128
             --no-precise-bn``). Reports the test accuracy, the validation accuracy of every epoch and the
             batch size the default chose.
  digits     scikit-learn's 1,797 8x8 digits as a folder (every fifth image in test/): lenet5, 10 epochs, now
             and before.
  imbalanced the same digits with 200 / 20 / 200 / 20 training images (10:1), balanced test set; lenet5, 3
             epochs, with plain cross-entropy, ``--class-weights auto`` and ``--sampler balanced``, at the default
             batch size and at 128: test macro-F1, balanced accuracy and accuracy from ``cnnctl eval --json``.

Every run is its own ``cnnctl`` process with ``--threads`` (default 2) and seed 0. MNIST comes as for
``cnnctl download mnist``: the data folder, else ``$CNNCTL_MIRROR`` or the official mirrors (tests/real_mnist.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

ARCHS = {  # architecture → the extra options it needs on 28x28 digits
    "lenet5": [],
    "simplecnn": [],
    "smallvgg": [],
    "resnet18": ["--img-size", "32"],
    "mobilenet_v3_small": ["--img-size", "64"],
}
BEFORE = ["--batch-size", "128", "--no-precise-bn"]


def cnnctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cnnctl", *args], capture_output=True, text=True, env=env,
                          check=False)


def train(arch: str, data: Path, out: Path, extra: list[str], threads: int, epochs: int, name: str
          ) -> dict[str, object]:
    started = time.perf_counter()
    done = cnnctl("train", arch, "--data", str(data), "--epochs", str(epochs), "--threads", str(threads),
                  "--out", str(out), "--name", name, "--no-plots", *ARCHS.get(arch, []), *extra)
    if done.returncode != 0:
        raise SystemExit(f"cnnctl train {arch} failed:\n{done.stderr}")
    run = out / name / "1"
    results = json.loads((run / "results.json").read_text())
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    config = json.loads((run / "config.json").read_text())
    return {"run": str(run), "test_acc": results["test_acc"], "best_epoch": results["best_epoch"],
            "val_acc": [float(row["val_acc"]) for row in rows], "train_acc": [float(row["train_acc"]) for row in rows],
            "batch_size": config["batch_size"], "seconds": time.perf_counter() - started}


def evaluate(run: str) -> dict[str, float]:
    done = cnnctl("eval", str(Path(run) / "best.safetensors"), "--json")
    if done.returncode != 0:
        raise SystemExit(f"cnnctl eval failed:\n{done.stderr}")
    return json.loads(done.stdout)


def balanced(work: Path, archs: list[str], threads: int) -> list[dict[str, object]]:
    from real_mnist import write_mnist_folder

    data = write_mnist_folder(work / "mnist4")
    rows = []
    for arch in archs:
        for leg, extra in (("before", BEFORE), ("now", [])):
            result = train(arch, data, work / "runs", extra, threads, 5, f"{arch}-{leg}")
            rows.append({"arch": arch, "leg": leg, **result})
            print(f"{arch:20s} {leg:6s} batch {result['batch_size']:>3}  test {result['test_acc']:.2%}  val "
                  + " ".join(f"{v:.0%}" for v in result["val_acc"]) + f"  ({result['seconds']:.0f}s)", flush=True)
    return rows


def sklearn_digits(work: Path, threads: int) -> list[dict[str, object]]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = work / "digits"
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / ("test" if index % 5 == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).round().astype(np.uint8)).save(folder / f"{index:04d}.png")
    rows = []
    for leg, extra in (("before", BEFORE), ("now", [])):
        result = train("lenet5", root, work / "runs", extra, threads, 10, f"digits-{leg}")
        rows.append({"leg": leg, **result})
        print(f"sklearn digits lenet5 {leg:6s} batch {result['batch_size']:>3}  test {result['test_acc']:.2%}",
              flush=True)
    return rows


def imbalanced(work: Path, threads: int) -> list[dict[str, object]]:
    from real_mnist import write_mnist_folder

    data = write_mnist_folder(work / "mnist4-10to1", train_per_class=(200, 20, 200, 20))
    rows = []
    legs = []
    for batch in ([], ["--batch-size", "128"]):
        for name, extra in (("plain", []), ("class-weights auto", ["--class-weights", "auto"]),
                            ("sampler balanced", ["--sampler", "balanced"])):
            legs.append((f"{name}{' batch 128' if batch else ''}", [*batch, *extra]))
    for leg, extra in legs:
        result = train("lenet5", data, work / "runs", extra, threads, 3, "lenet5-" + leg.replace(" ", "-"))
        scores = evaluate(str(result["run"]))
        rows.append({"leg": leg, "macro_f1": scores["macro_f1"], "balanced_accuracy": scores["balanced_accuracy"],
                     "accuracy": scores["accuracy"]})
        print(f"lenet5 10:1 {leg:30s} macro-F1 {scores['macro_f1']:.4f}  balanced accuracy "
              f"{scores['balanced_accuracy']:.2%}  accuracy {scores['accuracy']:.2%}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("balanced", "digits", "imbalanced"))
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="cnnctl-smalldata-") as scratch:
        work = Path(scratch)
        if args.only in (None, "balanced"):
            report["balanced"] = balanced(work, args.archs, args.threads)
        if args.only in (None, "digits"):
            report["digits"] = sklearn_digits(work, args.threads)
        if args.only in (None, "imbalanced"):
            report["imbalanced"] = imbalanced(work, args.threads)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
