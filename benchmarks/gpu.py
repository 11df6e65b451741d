"""cnnctl on a CUDA GPU, in under 5 minutes, one table: resnet18 CIFAR-shaped training vs its compute limit (with
and without ``--amp``, channels-last, ``torch.compile`` for the limit), the MNIST 10-epoch wall time, and predict.

    python benchmarks/gpu.py                 # needs CUDA; refuses with one line otherwise
    python benchmarks/gpu.py --images 20000  # CIFAR-shaped training images per epoch (default 20,000)

Every leg is a fresh process (``cnnctl`` itself, or ``--limit`` for the compute limit). CIFAR-shaped data is
written in the real CIFAR-10 python format from colourised MNIST digits; MNIST comes from ``--mirror``
(default ``$CNNCTL_MIRROR``), as in ``bench.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402 - the shared benchmark helpers (run, cnnctl, legs)


def compute_limit(options: dict) -> dict:
    """resnet18 (small-image) training step on CUDA tensors already on the device: images/s after warm-up."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(bench.REPO))
    from cnnctl.models import build_model

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if options["channels_last"] else torch.contiguous_format
    model = build_model("resnet18", num_classes=10, in_channels=3).to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step_model = torch.compile(model) if options["compile"] else model
    batch = options["batch_size"]
    images = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=options["amp"]):
            loss = F.cross_entropy(step_model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    steps = max(1, options["images"] // batch)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return {"images_per_s": steps * batch / (time.perf_counter() - started), "gpu": torch.cuda.get_device_name()}


def limit_leg(**options) -> dict:
    _, result = bench.run([sys.executable, __file__, "--limit", json.dumps(options)])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="CIFAR-shaped training images per epoch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mirror", default=bench.default_mirror(), help="MNIST folder or URL")
    parser.add_argument("--work", help="scratch folder (kept); default: a temporary folder")
    parser.add_argument("--limit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.limit:
        print(json.dumps(compute_limit(json.loads(args.limit))))
        return
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "True":
        print("error: benchmarks/gpu.py needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
              "run it on a machine with one", file=sys.stderr)
        raise SystemExit(2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnnctl-gpu-") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        bench._ENV["CNNCTL_DATA"] = str(work / "data")
        if args.mirror:
            bench._ENV["CNNCTL_MIRROR"] = args.mirror
        bench.run(bench.cnnctl("download", "mnist"))
        bench.image_leg("make-cifar", "--mnist-root", str(work / "data"), "--out", str(work / "data"),
                        "--train", str(args.images), "--test", "1000")
        rows: list[tuple[str, float, str]] = []
        batch = str(args.batch_size)
        for amp in (False, True):
            for channels_last in (False, True):
                flags = ["--amp" if amp else "--no-amp", "--channels-last" if channels_last else "--no-channels-last"]
                leg = bench.cnnctl_train_leg(["resnet18", "--dataset", "cifar10", "--epochs", "2", "--batch-size",
                                              batch, "--augment", "crop-flip", "--val-split", "0", "--device",
                                              "cuda", *flags], work)
                rate = leg["images"] / leg["epoch_s"][-1]
                limit = limit_leg(amp=amp, channels_last=channels_last, compile=False, batch_size=args.batch_size,
                                  images=args.images)["images_per_s"]
                rows.append((f"cnnctl train resnet18 cifar10 {' '.join(flags)}", rate,
                             f"limit {limit:,.0f}/s, b/c = {limit / rate:.3f}"))
                bench.log(f"  {rows[-1]}")
        for amp in (False, True):
            limit = limit_leg(amp=amp, channels_last=True, compile=True, batch_size=args.batch_size,
                              images=args.images)["images_per_s"]
            rows.append((f"compute limit, torch.compile, channels-last, amp={amp}", limit, ""))
        mnist = bench.run_cnnctl_train(10, work, False)
        rows.append(("cnnctl train lenet5 --dataset mnist --epochs 10 (wall s)", mnist["wall_s"],
                     f"test accuracy {mnist['test_acc']:.2%}"))
        folder, _ = bench.write_pngs(work)
        wall, result = bench.run(bench.cnnctl("predict", str(Path(mnist["run_dir"]) / "best.safetensors"),
                                              str(folder), "--output", str(work / "p.csv"), "--device", "cuda"))
        rows.append(("cnnctl predict, 10,000 MNIST PNGs (images/s end to end)", 10_000 / wall,
                     result.stderr.strip().splitlines()[-1]))
        gpu = limit_leg(amp=False, channels_last=False, compile=False, batch_size=32, images=32)["gpu"]
    print(f"GPU: {gpu}; total {time.perf_counter() - started:.0f}s")
    for name, value, note in rows:
        print(f"{name:<70} {value:>10,.1f}  {note}")


if __name__ == "__main__":
    main()
