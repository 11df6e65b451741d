"""Inference speed of every export format, and what each keeps of the accuracy, on this machine.

    python benchmarks/exports.py --lenet5 runs/lenet5-mnist/1 --output benchmarks/results/exports-DATE.txt

Three models, each with ``cnnctl.benchmark.benchmark`` (the function behind ``cnnctl benchmark``; one thread for
every runtime, throughput at batch 64):
  lenet5              a checkpoint trained on MNIST (``--lenet5``; e.g. ``cnnctl train lenet5 --dataset mnist
                      --epochs 1 --threads 1``), int8 calibrated on 64 of its training images
  resnet18            the small-image ResNet-18 at CIFAR's 3x32x32, random weights (seed 0): speed does not depend
                      on them, so the int8 formats calibrate on random pixels
  mobilenet_v3_small  at 3x224x224, random weights (seed 0), likewise
Then, for lenet5 only, ``cnnctl.export`` of every format on the 10,000 MNIST test images: accuracy in the
format's own runtime, agreement with PyTorch and the largest probability difference. The load average is
printed with every model (the machine has 2 cores shared with other work).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def random_checkpoint(folder: Path, arch: str, size: int) -> Path:
    import torch

    from cnnctl import checkpoint
    from cnnctl.checkpoint import CheckpointMeta
    from cnnctl.data.base import Preprocessing
    from cnnctl.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3)
    meta = CheckpointMeta(arch=arch, arch_args={}, classes=[f"class{i}" for i in range(10)],
                          preprocessing=Preprocessing(3, (size, size), 0, (0.485, 0.456, 0.406),
                                                      (0.229, 0.224, 0.225)), dataset=None)
    return checkpoint.save(folder / f"{arch}-{size}.safetensors", model, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lenet5", required=True, help="a lenet5 checkpoint or run folder trained on MNIST")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--models", default="lenet5,resnet18,mobilenet_v3_small")
    parser.add_argument("--no-gate", action="store_true", help="skip the lenet5 accuracy table")
    parser.add_argument("--output", help="also write the report here")
    args = parser.parse_args()

    from cnnctl.benchmark import benchmark
    from cnnctl.cli.benchmark_command import table_lines
    from cnnctl.cli.export_command import export_lines
    from cnnctl.exporter import FORMATS, export

    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    say(f"# exports benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(f"command: python benchmarks/exports.py {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = {"lenet5": Path(args.lenet5),
                       "resnet18": lambda: random_checkpoint(Path(folder), "resnet18", 32),
                       "mobilenet_v3_small": lambda: random_checkpoint(Path(folder), "mobilenet_v3_small", 224)}
        for name in args.models.split(","):
            path = checkpoints[name]
            path = path() if callable(path) else path
            say()
            say(f"## {name} (load average {' '.join(f'{v:.2f}' for v in os.getloadavg())})")
            report = benchmark(path, batch_size=args.batch_size, threads=args.threads, seconds=args.seconds)
            for line in table_lines(report):
                say(line)
            say(f"load average after: {report.machine['load_average_after']}")
        if not args.no_gate:
            say()
            say(f"## lenet5: every format judged on the MNIST test split (load average {os.getloadavg()[0]:.2f})")
            say("| format | accuracy | PyTorch | drop (points) | top-1 agreement | top-5 agreement "
                "| largest probability difference | max logit difference | size |")
            say("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for format in FORMATS:
                result = export(args.lenet5, format=format, output=f"{folder}/", dynamic_batch=True)
                for line in export_lines(result):
                    print("   ", line)
                c = result.comparison
                say(f"| {format} | {100 * c.accuracy:.2f}% | {100 * c.reference_accuracy:.2f}% | {c.drop:+.2f} | "
                    f"{100 * c.top1_agreement:.2f}% | {100 * c.topk_agreement:.2f}% | {c.max_prob_diff:.2g} | "
                    f"{c.max_abs_diff:.2g} | {result.size / 1e3:.0f} kB |")
    if args.output:
        Path(args.output).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
