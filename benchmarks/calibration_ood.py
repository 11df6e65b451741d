"""Calibration and abstention on real data: a LeNet-5 trained on the real MNIST, calibrated with ``cnnctl
calibrate``, shown images it never saw — inverted test digits, uniform noise, letters rendered from the system's
fonts and clothing-like silhouettes — and asked to answer "unknown" below a confidence threshold.

    python benchmarks/calibration_ood.py                       # ~5 min on 2 busy cores
    python benchmarks/calibration_ood.py --epochs 3 --out benchmarks/results/calibration-ood-2026-12-07.json

Steps (each ``cnnctl`` command its own process, ``--threads 1``, seed 0):
  1. ``cnnctl train lenet5 --dataset mnist --epochs N`` (55,000 training images, 5,000 held out for validation);
  2. ``cnnctl calibrate best.safetensors --target-error E --output calibrated.safetensors --json``: the temperature
     and the threshold, fitted on the 5,000 validation images;
  3. ``cnnctl eval`` of both files on the 10,000 test images: ECE before and after;
  4. the probabilities (after the temperature, and raw) of the test digits and of 2,000 images of each unseen kind,
     by ``cnnctl.predict``; at each threshold P: the share of each unseen kind answered "unknown" and the share of
     test digits lost (answered "unknown"), with the error rate of the test digits still answered;
  5. ``cnnctl predict calibrated.safetensors FOLDER`` on 200 PNGs of each kind, with the stored threshold: the
     command line's own "unknown" count.
``--ece-only``: ECE and NLL before and after temperature scaling, on validation and test, for networks trained
longer on fewer images (ECE_RUNS), which are over-confident where the 3-epoch LeNet-5 is not.

MNIST comes from the data folder or ``$CNNCTL_MIRROR`` (tests/real_mnist.py), e.g.
``CNNCTL_MIRROR=/work/shared/datasets/mnist``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cnnctl_process import cnnctl  # benchmarks/, beside this script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

FONTS = "/usr/share/fonts/truetype"
# letters that are drawn like digits (O/0, I/l/1, S/5, Z/2, B/8, b/6, g/q/9, G/6) are left out: a model that calls
# them digits is not wrong
LETTERS = "ACEFHJKLMNPRTUVWXYacdefhkmnprtuvwxy"
THRESHOLDS = (0.5, 0.9, 0.99, 0.999)




# ------------------------------------------------------------------------------------------ unseen images
def mnist_like(glyph: np.ndarray) -> np.ndarray:
    """A grey glyph (white on black) as MNIST draws digits: fitted into 20x20 keeping its aspect, then placed in
    28x28 with its centre of mass at the centre."""
    from PIL import Image

    ys, xs = np.nonzero(glyph > 30)
    if ys.size == 0:
        return np.zeros((28, 28), np.uint8)
    crop = glyph[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    height, width = crop.shape
    scale = 20 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.LANCZOS), dtype=np.float64).clip(0, 255)
    canvas = np.zeros((28, 28))
    total = small.sum() or 1.0
    cy = (small.sum(axis=1) * np.arange(small.shape[0])).sum() / total
    cx = (small.sum(axis=0) * np.arange(small.shape[1])).sum() / total
    top = int(np.clip(round(14 - cy), 0, 28 - small.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - small.shape[1]))
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    return canvas.clip(0, 255).astype(np.uint8)


def letters(count: int, seed: int) -> np.ndarray:
    """Letters in the DejaVu and Liberation fonts (regular, bold, italic), slightly rotated and thickened."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    fonts = sorted(str(p) for p in Path(FONTS).rglob("*.ttf") if "Mono" not in p.name)
    if not fonts:
        raise SystemExit(f"no TrueType fonts under {FONTS}")
    out = np.zeros((count, 28, 28), np.uint8)
    for index in range(count):
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], 64)
        image = Image.new("L", (112, 112))
        ImageDraw.Draw(image).text((20, 10), LETTERS[rng.integers(len(LETTERS))], fill=255, font=font)
        image = image.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.filter(ImageFilter.MaxFilter(5))  # a pen stroke as wide as MNIST's
        out[index] = mnist_like(np.asarray(image))
    return out


def silhouettes(count: int, seed: int) -> np.ndarray:
    """Fashion-MNIST-like shapes: shirts, trousers, dresses, bags, boots and sneakers as filled, textured
    polygons (Fashion-MNIST itself is not on this machine)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    shapes = {
        "shirt": [(20, 10), (44, 10), (60, 24), (52, 30), (46, 24), (46, 60), (18, 60), (18, 24), (12, 30), (4, 24)],
        "trousers": [(18, 4), (46, 4), (50, 60), (38, 60), (32, 20), (26, 60), (14, 60)],
        "dress": [(24, 4), (40, 4), (42, 20), (54, 60), (10, 60), (22, 20)],
        "bag": [(8, 22), (56, 22), (56, 58), (8, 58)],
        "boot": [(20, 4), (40, 4), (40, 40), (60, 46), (60, 58), (20, 58)],
        "sneaker": [(4, 40), (30, 30), (44, 34), (60, 44), (60, 54), (4, 54)],
    }
    names = list(shapes)
    out = np.zeros((count, 28, 28), np.uint8)
    for index in range(count):
        name = names[rng.integers(len(names))]
        jitter = rng.uniform(-3, 3, (len(shapes[name]), 2))
        polygon = [(x + dx, y + dy) for (x, y), (dx, dy) in zip(shapes[name], jitter)]
        image = Image.new("L", (64, 64))
        draw = ImageDraw.Draw(image)
        draw.polygon(polygon, fill=int(rng.integers(120, 256)))
        if name == "bag":
            draw.arc((18, 6, 46, 36), 180, 360, fill=200, width=4)
        pixels = np.asarray(image, dtype=np.float64)
        texture = rng.uniform(0.7, 1.0, pixels.shape)  # cloth is not flat like ink
        out[index] = mnist_like((pixels * texture).clip(0, 255).astype(np.uint8))
    return out


def unseen_sets(test_images: np.ndarray, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    chosen = test_images[rng.choice(len(test_images), count, replace=False)]
    return {
        "inverted digits": 255 - chosen,
        "uniform noise": rng.integers(0, 256, (count, 28, 28)).astype(np.uint8),
        "letters (fonts)": letters(count, seed=8),
        "clothing silhouettes": silhouettes(count, seed=9),
    }


# ------------------------------------------------------------------------------------------ numbers
def top_probabilities(checkpoint: Path, images: np.ndarray, raw: bool) -> tuple[np.ndarray, np.ndarray]:
    """(top probability, predicted class) per image, after the checkpoint's temperature (or ``raw``: T = 1)."""
    import warnings

    import torch

    import cnnctl

    model, _ = cnnctl.load(checkpoint)
    if raw:
        model.cnnctl_meta.calibration = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "unlike the training images" warning: that is the point here
        _, probabilities = cnnctl.predict(model, torch.from_numpy(images.copy()).unsqueeze(1), reject_below=0)
    top, predicted = probabilities.double().max(dim=1)
    return top.numpy(), predicted.numpy()


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an in-distribution image is more confident than an unseen one), ties counted half."""
    both = np.concatenate([inside, outside])
    order = both.argsort(kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # average ranks over ties (saturated softmax outputs tie at 1.0)
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[:len(inside)].sum() - len(inside) * (len(inside) + 1) / 2) / (len(inside) * len(outside)))


# ECE before and after on networks trained differently: the 3-epoch LeNet-5 above is hardly over-confident, a
# network trained many epochs on few images is
ECE_RUNS = {
    "lenet5, 1,000 images, 30 epochs": ["lenet5", "--limit", 1000, "--epochs", 30],
    "lenet, 1,000 images, 30 epochs": ["lenet", "--limit", 1000, "--epochs", 30],
    "lenet5, 55,000 images, 6 epochs, constant lr": ["lenet5", "--epochs", 6, "--scheduler", "none"],
}


def ece_section(work: Path) -> dict[str, object]:
    """Per ECE_RUNS entry: ``cnnctl train``, ``cnnctl calibrate`` (on the 5,000 validation images), ``cnnctl eval``
    (the 10,000 test images): accuracy, temperature, ECE and NLL before and after, on validation and on test."""
    results = {}
    for index, (label, options) in enumerate(ECE_RUNS.items()):
        name = f"ece{index}"
        cnnctl("train", *options, "--dataset", "mnist", "--threads", 1, "--seed", 0, "--out", work / "runs",
               "--name", name, "--no-plots", "--quiet")
        best = work / "runs" / name / "1" / "best.safetensors"
        record = json.loads(cnnctl("calibrate", best, "--json", "--device", "cpu").stdout)
        test = json.loads(cnnctl("eval", best, "--json", "--device", "cpu").stdout)
        results[label] = {
            "command": "cnnctl train " + " ".join(map(str, options)) + " --dataset mnist --threads 1 --seed 0",
            "temperature": record["temperature"], "test_accuracy": test["accuracy"],
            "val": {key: record[key] for key in ("ece_before", "ece_after", "nll_before", "nll_after")},
            "test": {"ece_before": test["calibration"]["ece"], "ece_after": test["calibrated"]["ece"],
                     "nll_before": test["loss"], "nll_after": test["calibrated"]["loss"]},
        }
        print(json.dumps({label: results[label]}), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ece-only", action="store_true", help="only the ECE section (ECE_RUNS)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--target-error", type=float, default=0.005)
    parser.add_argument("--count", type=int, default=2000, help="images of each unseen kind")
    parser.add_argument("--work", default=None, help="folder for the run (default: a temporary one)")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from real_mnist import load_mnist

    work = Path(args.work or tempfile.mkdtemp(prefix="calibration-ood-"))
    if args.ece_only:
        text = json.dumps({"command": " ".join(sys.argv), "ece": ece_section(work)}, indent=2)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return
    started = time.perf_counter()
    train = cnnctl("train", "lenet5", "--dataset", "mnist", "--epochs", args.epochs, "--threads", 1, "--seed", 0,
                   "--out", work / "runs", "--name", "lenet5-mnist", "--no-plots", "--quiet")
    best = work / "runs" / "lenet5-mnist" / "1" / "best.safetensors"
    train_seconds = time.perf_counter() - started
    calibrated = work / "calibrated.safetensors"
    record = json.loads(cnnctl("calibrate", best, "--target-error", args.target_error, "--output", calibrated,
                               "--json", "--device", "cpu").stdout)
    evaluation = json.loads(cnnctl("eval", calibrated, "--json", "--device", "cpu").stdout)
    test_images, test_labels = load_mnist("test")
    unseen = unseen_sets(test_images, args.count)

    rows = []
    for scaled in (True, False):
        top, predicted = top_probabilities(calibrated, test_images, raw=not scaled)
        wrong = predicted != test_labels
        unseen_top = {name: top_probabilities(calibrated, images, raw=not scaled)[0] for name, images in unseen.items()}
        thresholds = list(THRESHOLDS) + ([record["threshold"]] if scaled else [])
        for threshold in thresholds:
            answered = top >= threshold
            rows.append({
                "probabilities": "after T" if scaled else "raw (T = 1)",
                "threshold": threshold, "stored": scaled and threshold == record["threshold"],
                "test_lost": float(1 - answered.mean()),
                "test_error_answered": float(wrong[answered].mean()) if answered.any() else None,
                **{f"unknown: {name}": float((values < threshold).mean()) for name, values in unseen_top.items()},
            })
        rows.append({"probabilities": "after T" if scaled else "raw (T = 1)", "threshold": "AUROC",
                     **{f"auroc: {name}": auroc(top, values) for name, values in unseen_top.items()}})

    folder = work / "predict"
    for name, images in {"mnist test": test_images[:200], **{k: v[:200] for k, v in unseen.items()}}.items():
        from PIL import Image

        target = folder / name.replace(" ", "-").replace("(", "").replace(")", "")
        target.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            Image.fromarray(image).save(target / f"{index:04d}.png")
    cli = {}
    for sub in sorted(folder.iterdir()):
        result = cnnctl("predict", calibrated, sub, "--json", "--device", "cpu")
        lines = [line for line in result.stderr.splitlines() if line.startswith("unknown:")]
        cli[sub.name] = lines[0] if lines else ""

    summary = {
        "command": " ".join(sys.argv), "epochs": args.epochs, "train_seconds": round(train_seconds, 1),
        "train_quiet_output": train.stdout.strip().splitlines()[-1:] if train.stdout else [],
        "calibration": record,
        "test": {"accuracy": evaluation["accuracy"], "ece_before": evaluation["calibration"]["ece"],
                 "ece_after": evaluation["calibrated"]["ece"], "nll_before": evaluation["loss"],
                 "nll_after": evaluation["calibrated"]["loss"]},
        "rows": rows, "cli_predict": cli, "count_per_unseen_kind": args.count,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    # the PNGs of each kind, for a look
    preview = work / "unseen-preview.png"
    strip = np.concatenate([np.concatenate(list(images[:12]), axis=1) for images in unseen.values()], axis=0)
    from PIL import Image

    Image.fromarray(strip).save(preview)
    print(f"preview: {preview}", file=sys.stderr)


if __name__ == "__main__":
    main()
