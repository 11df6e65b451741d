"""Data sources on real MNIST digits 0-3: one set of images as a class folder, a CSV, JSON Lines, Parquet, a
Hugging Face ``datasets`` folder (``save_to_disk``) and tar shards, trained with the same seed; and the
near-duplicate check's hash on real digits.

    python benchmarks/sources.py                       # 500 training + 100 test images per digit, 3 epochs
    python benchmarks/sources.py --per-class 200 --epochs 2 --only train

Sections:
  train   ``cnnctl train lenet5 --data X --epochs E --seed 0 --threads T`` for each source, one process each: the
          test accuracy and loss (results.json), a digest of the final weights' tensors, the time to read the
          source (``scan_source``, second call: the first imports the source) and the run's wall time. The
          folder, CSV, JSON Lines, Parquet and datasets folder must give the same digest. Shards order their
          images by shard and member name, not by class folder, so their run is another (equally good) one;
          they are also trained with ``--cache none`` (streamed), which must equal their in-memory run.
  near    the perceptual hash (cnnctl/data/images.py) of 5,000 training and 1,000 test digits: how many pairs of
          distinct digits come within 0-8 bits, how many of those the thumbnail correlation confirms, and how far
          altered copies (JPEG quality 50/75, +20 brightness, resized 28→36→28, shifted one pixel) move; then
          ``cnnctl check`` on the training folder with 4 altered copies planted in test/, and its time without
          the near-duplicate search.

MNIST comes as for ``cnnctl download mnist`` (tests/real_mnist.py; ``CNNCTL_MIRROR``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def cnnctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cnnctl", *args], capture_output=True, text=True, env=env,
                          check=False)


def write_sources(root: Path) -> dict[str, Path]:
    """The folder's images as every other source, rows in reverse order."""
    import datasets
    from dataset_files import write_label_files

    rows = write_label_files(root)
    images = [{"bytes": (root / row["path"]).read_bytes(), "path": row["path"]} for row in rows]
    classes = sorted({row["label"] for row in rows})
    parts = {}
    for split in ("train", "test"):
        chosen = [(image, row) for image, row in zip(images, rows) if row["split"] == split]
        parts[split] = datasets.Dataset.from_dict(
            {"image": [image for image, _ in chosen], "label": [classes.index(row["label"]) for _, row in chosen]},
            features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}))
    hf = root.parent / "hf-digits"
    datasets.DatasetDict(parts).save_to_disk(str(hf))
    shards = root.parent / "shards"
    shards.mkdir(exist_ok=True)
    for split in ("train", "test"):
        names = sorted(row["path"] for row in rows if row["split"] == split)
        for number in range(4):
            with tarfile.open(shards / f"{split}-{number:03d}.tar", "w") as archive:
                for name in names[number::4]:
                    key = name.replace("/", "_").rsplit(".", 1)[0]
                    archive.add(root / name, arcname=f"{key}.png")
                    label = name.split("/")[1].encode()
                    info = tarfile.TarInfo(f"{key}.cls")
                    info.size = len(label)
                    archive.addfile(info, io.BytesIO(label))
    return {"folder": root, "csv": root / "labels.csv", "jsonl": root / "labels.jsonl",
            "parquet": root / "digits.parquet", "hf-datasets": hf, "shards": shards}


def weights_digest(path: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_section(work: Path, args: argparse.Namespace) -> list[str]:
    from real_mnist import write_mnist_folder

    from cnnctl.data.items import scan_source

    root = write_mnist_folder(work / "digits", train_per_class=args.per_class, test_per_class=args.per_class // 5)
    sources = write_sources(root)
    lines = [f"lenet5, {args.epochs} epochs, seed 0, --threads {args.threads}; real MNIST 0-3, {args.per_class} "
             f"training + {args.per_class // 5} test images per digit (the folder's own test/; 10% of train held "
             "out for validation)", "",
             f"{'source':<20} {'read s':>7} {'wall s':>7} {'test acc':>9} {'test loss':>10}  weights digest"]
    runs = [(name, path, []) for name, path in sources.items()] + [("shards --cache none", sources["shards"],
                                                                     ["--cache", "none"])]
    for name, path, extra in runs:
        scan_source(path)  # the first read imports the source's module (and pyarrow)
        started = time.perf_counter()
        scan_source(path)
        read = time.perf_counter() - started
        out = work / "runs" / name.replace(" ", "_")
        started = time.perf_counter()
        done = cnnctl("train", "lenet5", "--data", str(path), "--epochs", str(args.epochs), "--seed", "0",
                      "--threads", str(args.threads), "--out", str(out), "--name", "run", "--no-plots", *extra)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"training from {name} failed:\n{done.stderr}")
        results = json.loads((out / "run" / "1" / "results.json").read_text())
        lines.append(f"{name:<20} {read:7.2f} {wall:7.1f} {results['test_acc']:9.4f} {results['test_loss']:10.6f}  "
                     f"{weights_digest(out / 'run' / '1' / 'last.safetensors')}")
        print(lines[-1], flush=True)
    return lines


def near_section(work: Path, args: argparse.Namespace) -> list[str]:
    import numpy as np
    import torch
    from PIL import Image
    from real_mnist import load_mnist, write_mnist_folder

    from cnnctl.data.check import NEAR_CORRELATION, _correlation
    from cnnctl.data.images import perceptual_hash, thumbnail

    train, _ = load_mnist("train")
    test, _ = load_mnist("test")

    def rgb(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array))[None].expand(3, -1, -1).contiguous()

    def bits(values: list[int]) -> torch.Tensor:
        return torch.tensor([[(v >> i) & 1 for i in range(64)] for v in values], dtype=torch.float32)

    a_images, b_images = train[:5000], test[:1000]
    started = time.perf_counter()
    a_hash = [perceptual_hash(rgb(x)) for x in a_images]
    per_image = (time.perf_counter() - started) / len(a_images)
    b_hash = [perceptual_hash(rgb(x)) for x in b_images]
    a_thumb = [thumbnail(rgb(x)) for x in a_images]
    b_thumb = [thumbnail(rgb(x)) for x in b_images]
    a, b = bits(a_hash), bits(b_hash)
    distance = a.sum(1, keepdim=True) + b.sum(1) - 2 * a @ b.T
    lines = [f"perceptual hash: {per_image * 1e3:.2f} ms per 28x28 digit", "",
             "pairs of 5,000 training x 1,000 test digits (5,000,000 pairs, distinct images):",
             f"{'bits apart ≤':>13} {'pairs':>8} {'confirmed (corr ≥ ' + str(NEAR_CORRELATION) + ')':>26}"]
    for limit in (0, 2, 4, 6, 8):
        close = (distance <= limit).nonzero().tolist()
        confirmed = sum(_correlation(a_thumb[i], b_thumb[j]) >= NEAR_CORRELATION for i, j in close)
        lines.append(f"{limit:>13} {len(close):>8,} {confirmed:>26,}")

    def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(x).save(buffer, "JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))

    changes = {"jpeg q75": lambda x: jpeg(x, 75), "jpeg q50": lambda x: jpeg(x, 50),
               "brightness +20": lambda x: np.clip(x.astype(int) + 20, 0, 255).astype(np.uint8),
               "resized 28-36-28": lambda x: np.asarray(Image.fromarray(x).resize((36, 36)).resize((28, 28))),
               "shifted 1 px": lambda x: np.roll(x, 1, axis=1)}
    lines += ["", "altered copies of 300 training digits: bits apart (mean / max), share found (≤ 4 bits and "
              f"corr ≥ {NEAR_CORRELATION})"]
    for name, change in changes.items():
        found, apart = 0, []
        for x in train[:300]:
            y = change(x)
            bits_apart = bin(perceptual_hash(rgb(x)) ^ perceptual_hash(rgb(y))).count("1")
            apart.append(bits_apart)
            found += bits_apart <= 4 and _correlation(thumbnail(rgb(x)), thumbnail(rgb(y))) >= NEAR_CORRELATION
        lines.append(f"  {name:<18} {np.mean(apart):5.2f} / {max(apart):2d}   {found / 300:6.1%}")
    root = write_mnist_folder(work / "near", train_per_class=args.per_class, test_per_class=args.per_class // 5)
    originals = sorted((root / "train" / "1").glob("*.png"))[:4]
    for number, (path, name) in enumerate(zip(originals, ["jpeg q50", "brightness +20", "resized 28-36-28",
                                                          "jpeg q75"])):
        copy = changes[name](np.asarray(Image.open(path)))
        Image.fromarray(copy).save(root / "test" / "1" / f"planted{number}.png")
    started = time.perf_counter()
    cnnctl("check", "--data", str(root), "--json", "--near-distance", "-1")
    without = time.perf_counter() - started
    started = time.perf_counter()
    done = cnnctl("check", "--data", str(root), "--json")
    seconds = time.perf_counter() - started
    report = json.loads(done.stdout)
    pairs = report["near_duplicates_across_splits"]
    planted = sum("planted" in pair["other_path"] for pair in pairs)
    lines += ["", f"cnnctl check --data (4 x {args.per_class} training, 4 x {args.per_class // 5} test digits, 4 "
              f"altered copies planted in test/): {len(pairs)} near-duplicate pair(s), {planted} of them planted, "
              f"{seconds:.1f} s (without the search, --near-distance -1: {without:.1f} s)"]
    for pair in pairs:
        lines.append(f"  {Path(pair['path']).name} ~ {Path(pair['other_path']).name}: {pair['distance']} bits, "
                     f"corr {pair['correlation']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("train", "near"))
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "train"):
            lines += ["== train: the same images from every source =="] + train_section(work, args) + [""]
        if args.only in (None, "near"):
            lines += ["== near: perceptual hashes on real digits =="] + near_section(work, args)
    report = "\n".join(lines)
    print(report)
    if args.output:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
