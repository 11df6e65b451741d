"""Multi-label classification on real MNIST: each image is two different digits side by side (28x56 grey PNGs),
labelled with the set of its two digits, against a single-label model of the 45 combinations on the same images.

    python benchmarks/multilabel_mnist.py                      # build the data, train both, print and save
    python benchmarks/multilabel_mnist.py --work /tmp/mlmnist  # keep the data and run folders there
    python benchmarks/multilabel_mnist.py --archs lenet5 smallvgg --seeds 0 1 2 --threads 2   # (~15 min)
    python benchmarks/multilabel_mnist.py --extra "--batch-size 8"   # both models with another option

The data: 2,000 training images from MNIST's training split and 500 test images from its test split; each picks
two random images of two different digits (seed 0) and puts them side by side in a random order. They are
written as PNGs with two label files in the same folder:

  labels.csv   path,label,split   label "3|7" (the two digits: multi-label)
  combos.csv   path,label,split   label "3_7" (the pair, smaller digit first: one of 45 classes)

Both models are trained with cnnctl's defaults for 5 epochs (``cnnctl train lenet5 --data FILE --epochs 5
--threads 1``; the validation split is held out of the training rows), and evaluated on the 500 test images with
``cnnctl eval --json``. Subset accuracy (the whole set of labels right) is the multi-label model's accuracy; for
the combination model it is its plain accuracy. The combination model's digit mAP is computed from its
probabilities, each digit's score being the summed probability of the combinations that contain it.

MNIST comes from $CNNCTL_MIRROR (default /work/shared/datasets/mnist): the four official .gz files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def pairs(images: np.ndarray, labels: np.ndarray, count: int, generator: np.random.Generator
          ) -> list[tuple[np.ndarray, int, int]]:
    """``count`` (28x56 image, left digit, right digit) with two different digits."""
    made = []
    while len(made) < count:
        first, second = generator.integers(0, len(labels), size=2)
        if labels[first] == labels[second]:
            continue
        made.append((np.concatenate([images[first], images[second]], axis=1), int(labels[first]),
                     int(labels[second])))
    return made


def build(folder: Path, mirror: Path, train: int, test: int, seed: int) -> None:
    from PIL import Image

    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    multi, combos = ["path,label,split"], ["path,label,split"]
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        images = read_idx(mirror / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(mirror / f"{prefix}-labels-idx1-ubyte.gz")
        for index, (image, left, right) in enumerate(pairs(images, labels, count, generator)):
            name = f"images/{split}-{index:04d}.png"
            Image.fromarray(image).save(folder / name)
            low, high = sorted((left, right))
            multi.append(f"{name},{low}|{high},{split}")
            combos.append(f"{name},{low}_{high},{split}")
    (folder / "labels.csv").write_text("\n".join(multi) + "\n")
    (folder / "combos.csv").write_text("\n".join(combos) + "\n")


def cnnctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cnnctl", *args]
    print("$ cnnctl " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"cnnctl {' '.join(args)} failed:\n{done.stderr}")
    return done


def train_and_eval(label_file: Path, out: Path, arch: str, epochs: int, threads: int,
                   env: dict[str, str], extra: list[str]) -> tuple[Path, dict, str, float]:
    started = time.perf_counter()
    done = cnnctl("train", arch, "--data", str(label_file), "--epochs", str(epochs), "--threads", str(threads),
                  "--out", str(out), "--no-plots", *extra, env=env)
    seconds = time.perf_counter() - started
    run = Path(done.stdout.strip().splitlines()[-1].removeprefix("run folder: ").strip())
    evaluated = json.loads(cnnctl("eval", str(run), "--json", env=env).stdout)
    return run, evaluated, done.stderr, seconds


def combination_digit_map(run: Path, folder: Path) -> float:
    """The combination model's digit mAP: digit d's score is the summed probability of the pairs holding d."""
    import torch

    sys.path.insert(0, str(REPO))
    import cnnctl as api
    from cnnctl.engine.multilabel_metrics import mean_average_precision

    rows = [line.split(",") for line in (folder / "labels.csv").read_text().splitlines()[1:]]
    test = [(folder / path, label) for path, label, split in rows if split == "test"]
    model, _ = api.load(run)
    _, probabilities = api.predict(model, [path for path, _ in test])
    classes = model.cnnctl_meta.classes
    scores = torch.zeros(len(test), 10)
    for column, name in enumerate(classes):
        for digit in map(int, name.split("_")):
            scores[:, digit] += probabilities[:, column]
    targets = torch.zeros(len(test), 10)
    for row, (_, label) in enumerate(test):
        targets[row, [int(d) for d in label.split("|")]] = 1
    return mean_average_precision(scores, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and runs [a temporary one]")
    parser.add_argument("--mirror", type=Path, default=Path(os.environ.get("CNNCTL_MIRROR",
                                                                           "/work/shared/datasets/mnist")))
    parser.add_argument("--archs", nargs="+", default=["lenet5"], help="architectures to compare with [lenet5]")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds [0]")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="seed of the data")
    parser.add_argument("--extra", default="", help="more cnnctl train options for both models, e.g. '--batch-size 8'")
    parser.add_argument("--save", type=Path, default=RESULTS / "multilabel-mnist-2026-12-07.txt")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="multilabel-mnist-"))
    data = work / "data"
    if not (data / "labels.csv").is_file():
        build(data, args.mirror, args.train, args.test, args.seed)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    lines = [
        f"# benchmarks/multilabel_mnist.py: two different MNIST digits side by side (28x56), {args.train:,} train / "
        f"{args.test:,} test images (data seed {args.seed}); cnnctl train ARCH --data FILE --epochs {args.epochs} "
        f"--threads {args.threads} --seed S {args.extra}, defaults otherwise; evaluated with cnnctl eval --json on the "
        "test rows",
        "# subset accuracy: the multi-label model's at its decisions (thresholds tuned on validation, kept to the "
        "training images' range of labels per image: 2 here); 'thresholds only': at the same thresholds with "
        "eval --label-count any; the combination model's plain accuracy",
        "# the combination model's mAP is over the 10 digits, each digit's score the summed probability of the pairs "
        "holding it",
        "arch      seed  model                                  mAP     subset acc  thresholds only  train s",
    ]
    notes, summary = [], []
    for arch in args.archs:
        multi_accuracies, combo_accuracies = [], []
        for seed in args.seeds:
            extra = ["--seed", str(seed), *args.extra.split()]
            multi_run, multi, multi_log, multi_s = train_and_eval(data / "labels.csv", work / "runs", arch,
                                                                  args.epochs, args.threads, env, extra)
            any_count = json.loads(cnnctl("eval", str(multi_run), "--json", "--label-count", "any", env=env).stdout)
            combo_run, combo, _, combo_s = train_and_eval(data / "combos.csv", work / "runs", arch, args.epochs,
                                                          args.threads, env, extra)
            combo_map = combination_digit_map(combo_run, data)
            multi_accuracies.append(multi["subset_accuracy"])
            combo_accuracies.append(combo["accuracy"])
            lines += [
                f"{arch:<9} {seed:<5} multi-label (labels.csv, 10 labels)   {multi['map']:.4f}  "
                f"{multi['subset_accuracy']:.2%}      {any_count['subset_accuracy']:.2%}           {multi_s:.0f}",
                f"{arch:<9} {seed:<5} single-label (combos.csv, 45 pairs)   {combo_map:.4f}  {combo['accuracy']:.2%}"
                f"      —                {combo_s:.0f}",
            ]
            notes.append(f"# {arch} seed {seed}: runs {multi_run}, {combo_run}; thresholds tuned on validation: "
                         f"{', '.join(f'{t:.3f}' for t in multi['thresholds'])}")
        summary.append(f"# {arch}: mean subset accuracy over seeds {' '.join(map(str, args.seeds))}: multi-label "
                       f"{sum(multi_accuracies) / len(multi_accuracies):.2%}, combinations "
                       f"{sum(combo_accuracies) / len(combo_accuracies):.2%}")
    lines += summary + notes
    text = "\n".join(lines) + "\n"
    print(text)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(text)


if __name__ == "__main__":
    main()
