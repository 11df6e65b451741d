"""Cost of each ``--augment`` preset, ``--random-erasing`` and ``--mixup``/``--cutmix`` per training epoch, on
MNIST-shaped (60,000 × 1×28×28) and CIFAR-shaped (50,000 × 3×32×32) uint8 batches of 128, beside the time of a
training step of a small network on the same batch, all in one process on one thread (ratios side by side).

    python benchmarks/augment_cost.py                  # every preset, 30 batches each, seconds per epoch
    python benchmarks/augment_cost.py --batches 100 --threads 2

Times are this process's CPU seconds (``time.process_time``) on one thread; per epoch is the time per batch ×
batches per epoch (469 for MNIST, 391 for CIFAR-10). The
v2 policies run image by image (each image its own random operation: data/augment.py explains why); the column
``one draw per batch`` shows what applying the transform once to the whole batch would cost instead — every
image then gets the same operation, which is a different (and weaker) augmentation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHAPES = {"mnist": ((1, 28, 28), 60_000, "lenet5"), "cifar": ((3, 32, 32), 50_000, "smallvgg")}
BATCH = 128


def per_batch_seconds(function, batches: list) -> float:
    """CPU seconds of this process per call (on one thread, CPU time is what a quiet core would take as wall time,
    and it is far less disturbed than wall time when other processes share the cores)."""
    function(batches[0])  # warm-up
    started = time.process_time()
    for item in batches:
        function(item)
    return (time.process_time() - started) / len(batches)


def measure(label: str, shape: tuple[int, int, int], images: int, arch: str, count: int) -> list[dict]:
    """The rows of one data shape: a training step, then each augmentation, in seconds per epoch."""
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from cnnctl.data.augment import AUGMENT_PRESETS, AugmentSettings, make_augmentation
    from cnnctl.data.mixing import make_mixing
    from cnnctl.models import build_model

    channels, height, width = shape
    rows: list[dict] = []
    steps = -(-images // BATCH)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (BATCH, channels, height, width), generator=generator,
                             dtype=torch.int64).to(torch.uint8) for _ in range(count)]
    model = build_model(arch, num_classes=10, in_channels=channels)
    optimizer = torch.optim.Adam(model.parameters())
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    pad = 2 if arch == "lenet5" else 0  # LeNet-5 takes 32×32: digits are padded, as cnnctl does

    def step(images: torch.Tensor) -> None:
        inputs = F.pad(images.float() / 255, (pad,) * 4)
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step_s = per_batch_seconds(step, batches)
    rows.append({"data": label, "augmentation": f"(a {arch} training step)", "s_per_epoch": step_s * steps})
    settings = AugmentSettings(channels=channels)
    whole_batch = {"trivialaugment": v2.TrivialAugmentWide(), "randaugment": v2.RandAugment(),
                   "augmix": v2.AugMix(), "autoaugment-imagenet": v2.AutoAugment()}
    for name, preset in AUGMENT_PRESETS.items():
        if name == "none" or (preset.channels is not None and preset.channels != channels):
            continue
        augment = make_augmentation(name, (height, width), settings)
        seconds = per_batch_seconds(lambda images, augment=augment: augment(images, generator), batches)
        row = {"data": label, "augmentation": name, "s_per_epoch": seconds * steps,
               "x_step": seconds / step_s}
        if name in whole_batch:
            row["one_draw_per_batch_s_per_epoch"] = per_batch_seconds(whole_batch[name], batches) * steps
        rows.append(row)
    erasing = make_augmentation("none", (height, width), settings, random_erasing=0.25)
    seconds = per_batch_seconds(lambda images: erasing(images, generator), batches)
    rows.append({"data": label, "augmentation": "--random-erasing 0.25", "s_per_epoch": seconds * steps,
                 "x_step": seconds / step_s})
    for flag, mix in (("--mixup 0.2", make_mixing(0.2, None, 10)), ("--cutmix 1.0", make_mixing(None, 1.0, 10))):
        seconds = per_batch_seconds(lambda images, mix=mix: mix(images.float(), labels, generator), batches)
        rows.append({"data": label, "augmentation": flag, "s_per_epoch": seconds * steps,
                     "x_step": seconds / step_s})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = [row for label, shape in SHAPES.items() for row in measure(label, *shape, args.batches)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| data | augmentation | s per epoch | × the training step | one draw per batch, s per epoch |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        ratio = f"{row['x_step']:.2f}" if "x_step" in row else ""
        whole = f"{row['one_draw_per_batch_s_per_epoch']:.2f}" if "one_draw_per_batch_s_per_epoch" in row else ""
        print(f"| {row['data']} | {row['augmentation']} | {row['s_per_epoch']:.2f} | {ratio} | {whole} |")


if __name__ == "__main__":
    main()
