"""How many training images precise BatchNorm needs: test accuracy after each epoch with the BatchNorm statistics
re-estimated from N training images, against the running averages training left, in one run per network.

    python benchmarks/precise_bn.py                                  # mobilenet_v3_small, tv:resnet18 on MNIST
    python benchmarks/precise_bn.py --archs mobilenet_v3_small --limit 5000 --epochs 3 --counts 256,1024,4096

Each network trains with ``--no-precise-bn`` (so training itself is what the default does, minus the pass) on
``--limit`` random real-MNIST training images. After every epoch a callback copies the network and, for every N
in ``--counts`` (and 0 = the running averages as training left them, and "all" = every training image), runs
:func:`cnnctl.engine.batchnorm.recompute_batchnorm` over the same fixed order of un-augmented training images
precise BN uses, then scores the copy on the 10,000 test images. The images and the statistics code are cnnctl's
own; only the count changes. MNIST comes from ``$CNNCTL_MIRROR`` or ``../shared/datasets/mnist``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cnnctl.engine.callbacks import Callback

REPO = Path(__file__).resolve().parent.parent


class CountsProbe(Callback):
    """Per epoch, test accuracy of the network with BatchNorm statistics from each image count."""

    order = 100

    def __init__(self, counts: list[int]):
        self.counts = counts
        self.rows: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        import torch

        from cnnctl.checkpoint import unwrap
        from cnnctl.data.loader import BatchLoader
        from cnnctl.engine.batchnorm import recompute_batchnorm

        train, test, preprocessing = trainer.data.train, trainer.data.test, trainer.data.preprocessing
        config = trainer.config
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
        test_batches = BatchLoader(test, preprocessing, batch_size=256, device=trainer.device)
        row: dict[str, Any] = {"epoch": epoch, "train_images": len(train)}
        for count in [0, *self.counts, len(train)]:
            model = copy.deepcopy(unwrap(trainer.model))
            started = time.perf_counter()
            if count:
                chosen = BatchLoader(train.subset(order[:count]), preprocessing, batch_size=config.batch_size,
                                     device=trainer.device)
                recompute_batchnorm(model, chosen, max_images=count)
            seconds = time.perf_counter() - started
            model.eval()
            correct = 0
            with torch.inference_mode():
                for inputs, labels in test_batches:
                    correct += int((model(inputs).argmax(1) == labels).sum())
            key = "running" if count == 0 else ("all" if count == len(train) else str(count))
            row[key] = {"test_acc": correct / len(test), "seconds": seconds}
        self.rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="mobilenet_v3_small,tv:resnet18")
    parser.add_argument("--limit", type=int, default=5000, help="training images (random, of MNIST's 60,000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--counts", default="256,1024,4096", help="image counts to estimate the statistics from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    args = parser.parse_args()
    counts = [int(value) for value in args.counts.split(",")]
    mirror = os.environ.get("CNNCTL_MIRROR") or str(REPO.parent / "shared" / "datasets" / "mnist")
    import cnnctl

    results: dict[str, Any] = {"limit": args.limit, "epochs": args.epochs, "seed": args.seed, "archs": {}}
    with tempfile.TemporaryDirectory(prefix="cnnctl-precise-bn-") as scratch:
        os.environ.setdefault("CNNCTL_DATA", str(Path(scratch) / "data"))
        os.environ.setdefault("CNNCTL_MIRROR", mirror)
        for arch in args.archs.split(","):
            probe = CountsProbe(counts)
            started = time.perf_counter()
            cnnctl.train(arch, dataset="mnist", limit=args.limit, epochs=args.epochs, precise_bn=False,
                         val_split=0, seed=args.seed, out=str(Path(scratch) / "runs"), plots=False,
                         callbacks=[probe])
            results["archs"][arch] = {"rows": probe.rows, "wall_s": time.perf_counter() - started}
    header = ["running", *map(str, counts), "all"]
    print(f"precise BatchNorm: test accuracy on MNIST's 10,000 test images, {args.limit:,} training images, seed "
          f"{args.seed}; columns: the statistics training left (running) and re-estimated from N images")
    for arch, result in results["archs"].items():
        print(f"\n{arch}  ({result['wall_s']:.0f} s)")
        print(f"{'epoch':>5} " + " ".join(f"{name:>8}" for name in header) + "   seconds for N=" + header[-2])
        for row in result["rows"]:
            cells = " ".join(f"{row[name]['test_acc']:>8.2%}" for name in header)
            print(f"{row['epoch']:>5} {cells}   {row[header[-2]]['seconds']:.1f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
