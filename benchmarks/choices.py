"""Evidence for ``cnnctl train``'s speed defaults: training throughput of LeNet-5 on real MNIST batches for each
choice, one fresh process per measurement, alternating over rounds (median reported).

    python benchmarks/choices.py                       # batch size, memory format, threads, OpenMP waiting
    python benchmarks/choices.py --compile             # also torch.compile (adds its compile time)
    python benchmarks/choices.py --only batch --rounds 5

Each measurement trains ``--images`` images (after 10 warm-up steps) through cnnctl's BatchLoader with Adam.
Accuracy of the chosen defaults is checked separately by ``bench.py`` (the 10-epoch run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def measure(options: dict) -> dict:
    """One measurement in this process: images/s of the training step (and compile seconds if compiled)."""
    import torch
    import torch.nn.functional as F

    from cnnctl.data.loader import BatchLoader
    from cnnctl.data.splits import load_split, resolve_preprocessing
    from cnnctl.models import build_model
    from cnnctl.registry import get_dataset_spec, get_model_spec

    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    torch.manual_seed(0)
    spec = get_dataset_spec("mnist")
    train = load_split(spec, "train")
    preprocessing = resolve_preprocessing(get_model_spec("lenet5"), spec.image_shape, spec.mean, spec.std)
    channels_last = options.get("channels_last", False)
    batches = BatchLoader(train, preprocessing, batch_size=options["batch"], device=torch.device("cpu"),
                          shuffle=True, channels_last=channels_last, drop_last=True)
    model = build_model("lenet5", num_classes=10, in_channels=1, batch_norm=options.get("batch_norm", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step_model = model
    compile_s = 0.0
    if options.get("compile"):
        step_model = torch.compile(model)

    def step(inputs, labels):
        loss = F.cross_entropy(step_model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    iterator = iter(batches)
    started = time.perf_counter()
    for _ in range(10):
        step(*next(iterator))
    compile_s = time.perf_counter() - started if options.get("compile") else 0.0
    steps = max(1, options["images"] // options["batch"])
    started = time.perf_counter()
    for _ in range(steps):
        try:
            inputs, labels = next(iterator)
        except StopIteration:
            iterator = iter(batches)
            inputs, labels = next(iterator)
        step(inputs, labels)
    seconds = time.perf_counter() - started
    return {"images_per_s": steps * options["batch"] / seconds, "compile_s": compile_s,
            "threads": torch.get_num_threads()}


def experiments(args: argparse.Namespace) -> dict[str, list[tuple[str, dict, dict]]]:
    """Named groups of (label, options, extra environment); each group varies one choice."""
    base = {"batch": args.batch, "images": args.images, "batch_norm": args.batch_norm}
    groups: dict[str, list[tuple[str, dict, dict]]] = {
        "batch": [(f"batch {b}", {**base, "batch": b}, {}) for b in (64, 128, 256, 512)],
        "format": [("contiguous (NCHW)", base, {}), ("channels-last (NHWC)", {**base, "channels_last": True}, {})],
        "threads": [(f"{t} thread(s)", {**base, "threads": t}, {}) for t in (1, 2)],
        "omp": [("OMP_WAIT_POLICY unset (libgomp spins)", base, {"OMP_WAIT_POLICY": ""}),
                ("OMP_WAIT_POLICY=PASSIVE", base, {"OMP_WAIT_POLICY": "PASSIVE"})],
    }
    if args.compile:
        groups["compile"] = [("eager", base, {}), ("torch.compile", {**base, "compile": True}, {})]
    return {name: groups[name] for name in (args.only.split(",") if args.only else groups)}


def run_one(options: dict, extra_env: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key, value in extra_env.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    result = subprocess.run([sys.executable, __file__, "--one", json.dumps(options)], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated groups: batch, format, threads, omp, compile")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="batch size for the groups that do not vary it")
    parser.add_argument("--images", type=int, default=16384, help="images per measurement")
    parser.add_argument("--batch-norm", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    if not os.environ.get("CNNCTL_DATA") and not os.environ.get("CNNCTL_MIRROR"):
        print("note: set CNNCTL_MIRROR (or CNNCTL_DATA with MNIST in it) if MNIST is not cached", file=sys.stderr)
    for group, entries in experiments(args).items():
        results: dict[str, list[dict]] = {label: [] for label, _, _ in entries}
        for round_number in range(args.rounds):
            shift = round_number % len(entries)
            for label, options, extra_env in entries[shift:] + entries[:shift]:
                results[label].append(run_one(options, extra_env))
        reference = statistics.median(r["images_per_s"] for r in results[entries[0][0]])
        print(f"{group} (median of {args.rounds}, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}):")
        for label, runs in results.items():
            rate = statistics.median(r["images_per_s"] for r in runs)
            spread = f"{min(r['images_per_s'] for r in runs):,.0f}-{max(r['images_per_s'] for r in runs):,.0f}"
            compile_note = ""
            if any(r["compile_s"] for r in runs):
                compile_note = f", first 10 steps incl. compile {statistics.median(r['compile_s'] for r in runs):.1f}s"
            print(f"  {label:<40} {rate:>9,.0f} images/s  x{rate / reference:.2f}  (range {spread}){compile_note}",
                  flush=True)


if __name__ == "__main__":
    main()
