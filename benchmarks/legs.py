"""The benchmark's measured legs, each run in a fresh process by ``bench.py`` so every leg starts equal.

    python benchmarks/legs.py tutorial --data DIR --epochs 1 [--batch-norm]
    python benchmarks/legs.py compute  --data DIR --epochs 1 [--batch-norm]

Each prints one JSON line: per-epoch seconds, images per epoch, batch size, threads, memory format.

``tutorial`` is the seed tutorial's pipeline: ``torchvision.datasets.MNIST`` with a per-sample PIL
``Resize(32)``/``ToTensor``/``Normalize``, a ``DataLoader`` with batch 64 (no workers), Adam.
``compute`` is the compute limit: the same model, optimiser, batch size, thread count and memory format as
``cnnctl train``'s defaults, on float tensors that are already padded and normalised in memory — no data
handling at all, only forward, loss, backward and step.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def build_benchmark_model(batch_norm: bool):
    """cnnctl's own LeNet-5 (so every leg trains exactly the same network)."""
    from cnnctl.models import build_model

    return build_model("lenet5", num_classes=10, in_channels=1, batch_norm=batch_norm)


def torchvision_root(mnist_dir: Path, work: Path) -> Path:
    """Lay the verified .gz files out the way ``torchvision.datasets.MNIST`` expects them (untimed)."""
    raw = work / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        target = raw / name
        if not target.exists():
            with gzip.open(mnist_dir / f"{name}.gz") as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    return work / "torchvision"


def train_epoch(model, optimizer, batches) -> tuple[float, int]:
    """The plain training step every leg shares; returns (seconds, images)."""
    import torch.nn.functional as F

    model.train()
    seen = 0
    started = time.perf_counter()
    for inputs, labels in batches:
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += int(labels.shape[0])
    return time.perf_counter() - started, seen


def tutorial_leg(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    root = torchvision_root(Path(args.data), Path(args.work))
    transform = transforms.Compose([
        transforms.Resize((32, 32)),
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,)),
    ])
    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    model = build_benchmark_model(args.batch_norm)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epochs = [train_epoch(model, optimizer, loader) for _ in range(args.epochs)]
    return {"leg": "tutorial", "epoch_s": [s for s, _ in epochs], "images": epochs[0][1],
            "batch_size": args.batch_size, "threads": torch.get_num_threads(), "channels_last": False}


def compute_leg(args: argparse.Namespace) -> dict:
    """Pre-normalised in-memory tensors sliced in order: the cost of the model alone."""
    import torch

    from cnnctl.data.loader import Normalizer, fit_to_input
    from cnnctl.data.splits import load_split, resolve_preprocessing, split_positions
    from cnnctl.recipe.config import TrainConfig
    from cnnctl.registry import get_dataset_spec, get_model_spec

    defaults = TrainConfig(arch="lenet5", dataset=args.dataset)
    batch_size = args.batch_size or defaults.batch_size
    channels_last = defaults.channels_last if args.channels_last is None else args.channels_last
    threads = args.threads or defaults.threads
    if threads:
        torch.set_num_threads(threads)
    if channels_last is None:  # cnnctl's choice (engine/components.py): the format measured faster here
        from cnnctl.engine.components import choose_channels_last

        channels_last = choose_channels_last(build_benchmark_model(args.batch_norm), (1, 32, 32), batch_size or 128,
                                             torch.device("cpu"))
    torch.manual_seed(0)
    spec = get_dataset_spec(args.dataset)
    train = load_split(spec, "train", root=args.root)
    val_split = spec.default_val_split if defaults.val_split is None else defaults.val_split
    train_index, _ = split_positions(len(train), val_split, 0, None)
    train = train.subset(train_index) if train_index is not None else train
    preprocessing = resolve_preprocessing(get_model_spec("lenet5"), spec.image_shape, spec.mean, spec.std)
    images = Normalizer(preprocessing.mean, preprocessing.std, torch.device("cpu"))(
        fit_to_input(train.images, preprocessing))
    labels = train.labels
    model = build_benchmark_model(args.batch_norm)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images = images.contiguous(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size)]
    epochs = [train_epoch(model, optimizer, batches) for _ in range(args.epochs)]
    return {"leg": "compute", "epoch_s": [s for s, _ in epochs], "images": epochs[0][1], "batch_size": batch_size,
            "threads": torch.get_num_threads(), "channels_last": channels_last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("leg", choices=("tutorial", "compute"))
    parser.add_argument("--data", required=True, help="folder with the four verified MNIST .gz files")
    parser.add_argument("--root", help="cnnctl data root holding mnist/ (compute leg)")
    parser.add_argument("--work", default=".", help="scratch folder (tutorial leg unpacks MNIST here)")
    parser.add_argument("--dataset", default="mnist", help="registered dataset (compute leg)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--batch-norm", action="store_true", help="LeNet-5 with BatchNorm after each conv")
    args = parser.parse_args()
    if args.leg == "tutorial":
        args.batch_size = args.batch_size or 64
        result = tutorial_leg(args)
    else:
        result = compute_leg(args)
    result["batch_norm"] = args.batch_norm
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
