"""Image-folder, CIFAR and photo legs of the benchmark, each run in a fresh process by ``bench.py``.

    python benchmarks/image_legs.py make-folder --mnist-root ROOT --out DIR --files 5000 --size 64
    python benchmarks/image_legs.py make-cifar  --mnist-root ROOT --out DATA_ROOT --train 50000
    python benchmarks/image_legs.py make-photos --mnist-root ROOT --out DIR --count 2000 --megapixels 1,12
    python benchmarks/image_legs.py folder-tutorial --data DIR --arch mobilenet_v3_small --size 64 --epochs 2
    python benchmarks/image_legs.py folder-compute  --data DIR --arch mobilenet_v3_small --size 64 --epochs 2
    python benchmarks/image_legs.py cifar-tutorial  --data DATA_ROOT --epochs 1
    python benchmarks/image_legs.py cifar-compute   --data DATA_ROOT --images 50000 --epochs 1
    python benchmarks/image_legs.py cifar-inputs    --data DATA_ROOT --batch-size 32   # random vs real inputs
    python benchmarks/image_legs.py predict-tutorial --checkpoint CKPT --data DIR
    python benchmarks/image_legs.py decoders --data DIR --size 224 --files 100 --rounds 3

Each measuring leg prints one JSON line. The data is built from the real MNIST digits (colourised, resized,
JPEG-encoded), so files have realistic sizes and decode costs; the photos are digits upscaled to 1-12
megapixels with sensor-like noise.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def mnist_train(root: str):
    from cnnctl.data.splits import load_split
    from cnnctl.registry import get_dataset_spec

    return load_split(get_dataset_spec("mnist"), "train", root=root)


def colourise(digits, seed: int):
    """uint8 N×1×28×28 grey digits → N×3×28×28: a random ink and paper colour per image."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ink = torch.randint(0, 256, (len(digits), 3, 1, 1), generator=generator).float()
    paper = torch.randint(0, 256, (len(digits), 3, 1, 1), generator=generator).float()
    alpha = digits.float() / 255
    return (alpha * ink + (1 - alpha) * paper).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------------- data makers


def make_folder(args: argparse.Namespace) -> dict:
    """``out/train/<digit>/*.jpg`` (``files`` images) and a small ``out/test/`` (10 per class)."""
    from torchvision.io import encode_jpeg
    from torchvision.transforms.v2 import functional as TF

    train = mnist_train(args.mnist_root)
    out = Path(args.out)
    count = args.files + 100
    images = colourise(train.images[:count], seed=1)
    written = 0
    per_class_test: dict[int, int] = {}
    for start in range(0, count, 256):
        batch = TF.resize(images[start:start + 256], [args.size, args.size], antialias=True)
        for offset, image in enumerate(batch):
            index = start + offset
            label = int(train.labels[index])
            split = "train"
            if index >= args.files:
                if per_class_test.get(label, 0) >= 10:
                    continue
                per_class_test[label] = per_class_test.get(label, 0) + 1
                split = "test"
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index:06d}.jpg").write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
            written += 1
    return {"files": written, "bytes": sum(p.stat().st_size for p in out.rglob("*.jpg"))}


def make_cifar(args: argparse.Namespace) -> dict:
    """``out/cifar10/cifar-10-python.tar.gz`` in the official layout (5 data batches, a test batch, meta), from
    colourised MNIST digits padded to 32x32."""
    import io

    import numpy as np
    import torch.nn.functional as F

    train = mnist_train(args.mnist_root)
    total = args.train + args.test
    repeats = -(-total // len(train))
    digits = train.images.repeat(repeats, 1, 1, 1)[:total]
    labels = train.labels.repeat(repeats)[:total]
    images = colourise(F.pad(digits, (2, 2, 2, 2)), seed=2).reshape(total, -1).numpy()
    members: dict[str, bytes] = {}
    per_batch = -(-args.train // 5)
    for number in range(5):
        part = slice(number * per_batch, min(args.train, (number + 1) * per_batch))
        members[f"data_batch_{number + 1}"] = pickle.dumps(
            {"batch_label": b"training", "labels": labels[part].tolist(), "data": np.ascontiguousarray(images[part]),
             "filenames": []}, protocol=4)
    members["test_batch"] = pickle.dumps({"batch_label": b"testing", "labels": labels[args.train:].tolist(),
                                          "data": np.ascontiguousarray(images[args.train:]), "filenames": []},
                                         protocol=4)
    members["batches.meta"] = pickle.dumps({"label_names": [], "num_vis": 3072}, protocol=4)
    folder = Path(args.out) / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz", compresslevel=1) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    # cnnctl checks the archive against the official checksum; mark this synthetic one as checked so it is read
    from cnnctl.data.download import _stat_entry, _write_marker
    from cnnctl.registry import get_dataset_spec

    remote = get_dataset_spec("cifar10").files[0]
    _write_marker(folder, {remote.name: _stat_entry(folder / remote.name, remote)})
    return {"train": args.train, "test": args.test}


def make_photos(args: argparse.Namespace) -> dict:
    """``out/<i>.jpg``: colour digits upscaled to a random 4:3 size between the given megapixels, with noise."""
    import numpy as np
    from PIL import Image

    train = mnist_train(args.mnist_root)
    low, high = (float(x) for x in args.megapixels.split(","))
    rng = np.random.default_rng(3)
    images = colourise(train.images[:args.count], seed=3).permute(0, 2, 3, 1).numpy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = 0
    for index in range(args.count):
        megapixels = rng.uniform(low, high)
        width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
        height = int(width * 3 / 4)
        photo = np.asarray(Image.fromarray(images[index]).resize((width, height), Image.BICUBIC), dtype=np.int16)
        noise = rng.integers(-12, 13, size=(-(-height // 4), -(-width // 4), 3), dtype=np.int16)
        photo = photo + np.kron(noise, np.ones((4, 4, 1), dtype=np.int16))[:height, :width]
        Image.fromarray(photo.clip(0, 255).astype(np.uint8)).save(out / f"{index:05d}.jpg", quality=90)
        pixels += width * height
    return {"photos": args.count, "megapixels_mean": pixels / args.count / 1e6,
            "bytes": sum(p.stat().st_size for p in out.glob("*.jpg"))}


# -------------------------------------------------------------------------------------------------------- shared


def build(arch: str, num_classes: int):
    from cnnctl.models import build_model

    return build_model(arch, num_classes=num_classes, in_channels=3)


def train_epochs(model, batches_per_epoch, epochs: int, warmup: bool = False) -> list[float]:
    """Adam, cross-entropy; per-epoch seconds (the first includes everything the loader does first).

    ``warmup`` (the compute limit): two untimed full steps first (oneDNN builds its kernels, Adam its state), so
    one-time costs are not charged to the limit — with a few batches per epoch they would dominate it. The
    optimizer is cnnctl's default, built by cnnctl (Adam, lr 1e-3).
    """
    import torch.nn.functional as F

    from cnnctl.engine.optim import build_optimizer
    from cnnctl.recipe.config import TrainConfig

    optimizer = build_optimizer(TrainConfig(arch="resnet18"), model.parameters())
    model.train()
    if warmup:
        for inputs, labels in list(batches_per_epoch())[:2]:
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for inputs, labels in batches_per_epoch():
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def chosen_channels_last(model, input_shape: tuple[int, int, int], batch_size: int, asked: bool | None) -> bool:
    """``--channels-last``/``--no-channels-last``, else what ``cnnctl train`` chooses for this model and batch
    (engine/components.py: measured on this CPU, cached), so that the limit runs in cnnctl's memory format."""
    import torch

    from cnnctl.engine.components import choose_channels_last

    if asked is not None:
        return asked
    return choose_channels_last(model, input_shape, batch_size, torch.device("cpu"))


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------- folder legs


class TutorialFolder:
    """The folder tutorial's Dataset: list the files, then PIL open + convert + transforms per sample."""

    def __init__(self, root: Path, size: int):
        from torchvision import transforms

        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.items = [(path, label) for label, name in enumerate(self.classes)
                      for path in sorted((root / name).iterdir())]
        self.transform = transforms.Compose([
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.items[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def folder_tutorial(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    dataset = TutorialFolder(Path(args.data) / "train", args.size)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    model = build(args.arch, len(dataset.classes))
    seconds = train_epochs(model, lambda: loader, args.epochs)
    return {"leg": "tutorial", "epoch_s": seconds, "images": len(dataset), "batch_size": args.batch_size,
            "workers": args.workers, "threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib()}


def compute_batches(count: int, size: int, batch_size: int, classes: int, channels_last: bool):
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(count, 3, size, size).contiguous(memory_format=fmt)
    labels = torch.randint(0, classes, (count,))
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, count, batch_size)]


def folder_compute(args: argparse.Namespace) -> dict:
    """The compute limit: the same model and batch size on normalised float tensors already in memory."""
    import torch

    torch.manual_seed(0)
    count = sum(1 for p in (Path(args.data) / "train").rglob("*") if p.is_file())
    model = build(args.arch, 10)
    channels_last = chosen_channels_last(model, (3, args.size, args.size), args.batch_size, args.channels_last)
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    batches = compute_batches(count, args.size, args.batch_size, 10, channels_last)
    seconds = train_epochs(model, lambda: batches, args.epochs, warmup=True)
    return {"leg": "compute", "epoch_s": seconds, "images": count, "batch_size": args.batch_size,
            "threads": torch.get_num_threads(), "channels_last": channels_last, "peak_rss_mib": peak_rss_mib()}


# ----------------------------------------------------------------------------------------------------- CIFAR legs


class TutorialCifar:
    """The ResNet tutorial's hand-written Dataset: unpickle the batches, PIL image + transforms per sample."""

    def __init__(self, root: Path):
        import numpy as np
        from torchvision import transforms

        with tarfile.open(root / "cifar10" / "cifar-10-python.tar.gz") as archive:
            batches = [pickle.load(archive.extractfile(f"cifar-10-batches-py/data_batch_{n}"),  # noqa: S301
                                   encoding="latin1") for n in range(1, 6)]  # our own file, written by make-cifar
        self.data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.labels = [label for b in batches for label in b["labels"]]
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.labels[index]


def cifar_tutorial(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    dataset = TutorialCifar(Path(args.data))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    model = build("resnet18", 10)
    seconds = train_epochs(model, lambda: loader, args.epochs)
    return {"leg": "tutorial", "epoch_s": seconds, "images": len(dataset), "batch_size": args.batch_size,
            "workers": args.workers, "threads": torch.get_num_threads()}


def cifar_compute(args: argparse.Namespace) -> dict:
    """The compute limit of ``cnnctl train resnet18 --dataset cifar10``: the same network, memory format, optimizer
    and batch on the same images (read by cnnctl from the CIFAR-10 archive), normalised into memory beforehand;
    with ``--data`` missing, random tensors of the same shape."""
    import torch

    torch.manual_seed(0)
    model = build("resnet18", 10)
    channels_last = chosen_channels_last(model, (3, 32, 32), args.batch_size, args.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if args.data:
        from cnnctl.data.loader import Normalizer
        from cnnctl.data.splits import load_split
        from cnnctl.registry import get_dataset_spec

        spec = get_dataset_spec("cifar10")
        train = load_split(spec, "train", root=args.data)
        images = Normalizer(spec.mean, spec.std, torch.device("cpu"))(train.images[:args.images])
        images, labels = images.contiguous(memory_format=fmt), train.labels[:args.images]
        batches = [(images[i:i + args.batch_size], labels[i:i + args.batch_size])
                   for i in range(0, len(labels), args.batch_size)]
    else:
        batches = compute_batches(args.images, 32, args.batch_size, 10, channels_last)
    seconds = train_epochs(model, lambda: batches, args.epochs, warmup=True)
    return {"leg": "compute", "epoch_s": seconds, "images": sum(len(y) for _, y in batches),
            "batch_size": args.batch_size, "threads": torch.get_num_threads(), "channels_last": channels_last}


def cifar_inputs(args: argparse.Namespace) -> dict:
    """Why random tensors are no compute limit: the same resnet18 steps on random Gaussian inputs with random
    labels, on real normalised crop-flip batches, and on the random ones with denormals flushed to zero, in one
    process, taking turns (``--rounds``, ``--steps`` each); images/s and ratios to the random inputs."""
    import copy
    import statistics

    import torch
    import torch.nn.functional as F

    from cnnctl.data.augment import AugmentSettings, make_augmentation
    from cnnctl.data.loader import BatchLoader
    from cnnctl.data.splits import load_split, resolve_preprocessing
    from cnnctl.registry import get_dataset_spec, get_model_spec

    torch.manual_seed(0)
    spec = get_dataset_spec("cifar10")
    train = load_split(spec, "train", root=args.data)
    preprocessing = resolve_preprocessing(get_model_spec("resnet18"), spec.image_shape, spec.mean, spec.std)
    augment = make_augmentation("crop-flip", preprocessing.image_size, AugmentSettings(channels=3))
    loader = BatchLoader(train, preprocessing, batch_size=args.batch_size, device=torch.device("cpu"), shuffle=True,
                         augment=augment)
    real = [batch for batch, _ in zip(loader, range(4))]
    random = [(torch.randn_like(x), torch.randint(0, 10, y.shape)) for x, y in real]
    base = build("resnet18", 10)

    def runner(batches, flush_denormal: bool = False):
        model = copy.deepcopy(base).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(index: int) -> None:
            torch.set_flush_denormal(flush_denormal)
            inputs, labels = batches[index % len(batches)]
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            torch.set_flush_denormal(False)
        return step

    variants = {"random inputs and labels": runner(random), "real crop-flip batches": runner(real),
                "random, denormals flushed": runner(random, True)}
    for step in variants.values():
        step(0)
        step(1)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for number in range(args.rounds):
        for name in names[number % len(names):] + names[:number % len(names)]:
            started = time.perf_counter()
            for index in range(args.steps):
                variants[name](index)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - started))
    return {"leg": "cifar-inputs", "batch_size": args.batch_size, "threads": torch.get_num_threads(),
            "images_per_s": {name: statistics.median(values) for name, values in rates.items()},
            "ratio": {name: statistics.median(v / r for v, r in zip(values, rates[names[0]]))
                      for name, values in rates.items()}}


# --------------------------------------------------------------------------------------------------- photo legs


def predict_tutorial(args: argparse.Namespace) -> dict:
    """The straightforward loop: for each file, PIL open + Resize + ToTensor + Normalize, model on one image."""
    import torch
    from PIL import Image
    from torchvision import transforms

    import cnnctl

    model, preprocessing = cnnctl.load(args.checkpoint)
    model.eval()
    transform = transforms.Compose([transforms.Resize(tuple(preprocessing.image_size)), transforms.ToTensor(),
                                    transforms.Normalize(preprocessing.mean, preprocessing.std)])
    files = sorted(Path(args.data).glob("*.jpg"))
    started = time.perf_counter()
    labels = []
    with torch.no_grad():
        for path in files:
            with Image.open(path) as image:
                inputs = transform(image.convert("RGB")).unsqueeze(0)
            labels.append(int(model(inputs).argmax(1)))
    seconds = time.perf_counter() - started
    return {"leg": "tutorial", "seconds": seconds, "images": len(files), "images_per_s": len(files) / seconds}


def decoders(args: argparse.Namespace) -> dict:
    """Files per second to a ``size``×``size`` uint8 RGB tensor, per decoder (benchmarks/decoders.py's table)."""
    from decoders import measure

    files = sorted(Path(args.data).rglob("*.jpg"))[:args.files]
    result = measure("photos", files, args.size, args.rounds)
    return {"leg": "decoders", "files": len(files), "size": args.size,
            "files_per_s": {name: row["files_per_s"] for name, row in result["rows"].items()},
            "vs_torchvision": {name: row["vs_torchvision"] for name, row in result["rows"].items()},
            "missing": result["missing"]}


LEGS = {"make-folder": make_folder, "make-cifar": make_cifar, "make-photos": make_photos,
        "folder-tutorial": folder_tutorial, "folder-compute": folder_compute, "cifar-tutorial": cifar_tutorial,
        "cifar-compute": cifar_compute, "cifar-inputs": cifar_inputs, "predict-tutorial": predict_tutorial,
        "decoders": decoders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("leg", choices=sorted(LEGS))
    parser.add_argument("--mnist-root", help="cnnctl data root holding mnist/ (data makers)")
    parser.add_argument("--out")
    parser.add_argument("--data")
    parser.add_argument("--checkpoint")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--megapixels", default="1,12")
    parser.add_argument("--arch", default="mobilenet_v3_small")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3,
                        help="decoders: rotating rounds; cifar-inputs: turns of each variant")
    parser.add_argument("--steps", type=int, default=3, help="cifar-inputs: training steps per turn")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="compute legs: the memory format [default: the one cnnctl train chooses]")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(json.dumps(LEGS[args.leg](args)), flush=True)


if __name__ == "__main__":
    main()
