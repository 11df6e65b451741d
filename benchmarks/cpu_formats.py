"""Memory format, bf16 autocast and torch.compile for CPU training steps, measured side by side in one process.

    python benchmarks/cpu_formats.py                                  # resnet18, smallvgg, lenet5+BN
    python benchmarks/cpu_formats.py --models resnet18 --rounds 5 --steps 4
    python benchmarks/cpu_formats.py --compile                        # also torch.compile (and its compile time)

Each model is built once per variant from the same initial weights; the variants then take turns, ``--steps``
training steps (Adam, cross-entropy, a fixed batch of ``--batch`` images) each, in an order that rotates every
round, so that load from other jobs on a shared machine lands on all of them alike. Printed: the median images/s of
each variant and the median of the per-round ratios to the first variant (contiguous fp32), with the load average.
Shapes: resnet18 (small-image) and smallvgg on 3×32×32 (CIFAR-shaped), lenet5 + BatchNorm on 1×32×32 (padded MNIST).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHAPES = {"resnet18": (3, 32, 32, {}), "smallvgg": (3, 32, 32, {}), "lenet5": (1, 32, 32, {"batch_norm": True})}


def variants(args: argparse.Namespace) -> list[tuple[str, bool, bool, bool]]:
    """(label, channels_last, bf16 autocast, torch.compile)."""
    found = [("contiguous fp32", False, False, False), ("channels-last fp32", True, False, False),
             ("contiguous bf16 autocast", False, True, False), ("channels-last bf16 autocast", True, True, False)]
    if args.compile:
        found += [("contiguous fp32 torch.compile", False, False, True),
                  ("channels-last fp32 torch.compile", True, False, True)]
    return found


def measure_model(name: str, args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from cnnctl.models import build_model

    channels, height, width, extra = SHAPES[name]
    torch.manual_seed(0)
    base = build_model(name, num_classes=10, in_channels=channels, **extra)
    inputs = torch.randn(args.batch, channels, height, width)
    labels = torch.randint(0, 10, (args.batch,))
    runners = {}
    for label, channels_last, bf16, compiled in variants(args):
        model = copy.deepcopy(base)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step_model = torch.compile(model) if compiled else model
        batch = inputs.contiguous(memory_format=fmt)

        def step(step_model=step_model, optimizer=optimizer, batch=batch, bf16=bf16) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(step_model(batch), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        started = time.perf_counter()
        for _ in range(args.warmup):  # oneDNN kernel creation, and compilation
            step()
        runners[label] = (step, time.perf_counter() - started)
    rates: dict[str, list[float]] = {label: [] for label in runners}
    labels_in_order = list(runners)
    for number in range(args.rounds):
        shift = number % len(labels_in_order)
        for label in labels_in_order[shift:] + labels_in_order[:shift]:
            step = runners[label][0]
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[label].append(args.steps * args.batch / (time.perf_counter() - started))
    reference = labels_in_order[0]
    return {
        "model": name, "batch": args.batch, "shape": [channels, height, width], "threads": torch.get_num_threads(),
        "variants": {label: {"images_per_s": statistics.median(values), "range": [min(values), max(values)],
                             "ratio": statistics.median(v / r for v, r in zip(values, rates[reference])),
                             "warmup_s": runners[label][1]} for label, values in rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,smallvgg,lenet5")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="training steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (its time is the warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    import torch

    from cnnctl.engine.precision import cpu_supports_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.models.split(","):
        before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        result = measure_model(name, args)
        result["load"] = f"{before} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        results.append(result)
        print(f"{name} {'x'.join(map(str, result['shape']))}, batch {args.batch}, {result['threads']} threads, "
              f"native bf16: {cpu_supports_bf16()}, median of {args.rounds} rounds x {args.steps} steps "
              f"(load before/after {result['load']}):", flush=True)
        for label, row in result["variants"].items():
            print(f"  {label:<34} {row['images_per_s']:>8,.1f} images/s  x{row['ratio']:.2f}  "
                  f"(range {row['range'][0]:,.1f}-{row['range'][1]:,.1f}; warm-up {args.warmup} steps "
                  f"{row['warmup_s']:.1f}s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
