"""The fast paths give the same numbers as the straightforward ones: BatchLoader against per-sample torchvision
transforms, the Predictor's inline/threaded decoding against decoding one file at a time, evaluate against a
per-sample loop, and the benchmark's own legs on a tiny dataset. Speed is never asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cnnctl.checkpoint import CheckpointMeta
from cnnctl.data.base import ImageTensors, Preprocessing
from cnnctl.data.loader import BatchLoader
from cnnctl.engine import predict as predict_module
from cnnctl.engine.evaluate import evaluate
from cnnctl.engine.predict import Predictor, find_images
from cnnctl.models import build_model

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def random_split(count: int, channels: int, size: int, seed: int = 0) -> ImageTensors:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, size, size), generator=generator, dtype=torch.uint8)
    # labels are the sample's own index, so every batch says which images it holds
    return ImageTensors(images, torch.arange(count), tuple(str(i) for i in range(count)))


@pytest.mark.parametrize("channels, size, preprocessing", [
    (1, 28, Preprocessing(1, (28, 28), pad=2, mean=(0.1307,), std=(0.3081,))),
    (3, 20, Preprocessing(3, (24, 24), pad=0, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))),
])
def test_batch_loader_equals_per_sample_torchvision_transforms(channels, size, preprocessing) -> None:
    split = random_split(37, channels, size)
    per_sample = v2.Compose([
        v2.Resize(list(preprocessing.image_size), antialias=True),
        v2.Pad(preprocessing.pad),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
    ])
    loader = BatchLoader(split, preprocessing, batch_size=8, device=CPU, shuffle=True, seed=3)
    assert len(loader) == 5
    seen: list[int] = []
    for inputs, labels in loader:
        assert inputs.dtype == torch.float32 and inputs.shape[1:] == (channels, *preprocessing.input_shape[1:])
        expected = torch.stack([per_sample(split.images[i]) for i in labels.tolist()])
        torch.testing.assert_close(inputs, expected, atol=2e-6, rtol=1e-6)
        seen += labels.tolist()
    assert sorted(seen) == list(range(37)) and seen != list(range(37))  # shuffled, each image once
    second = [labels.tolist() for _, labels in loader]
    assert sum(second, []) != seen  # a new order every epoch
    again = BatchLoader(split, preprocessing, batch_size=8, device=CPU, shuffle=True, seed=3)
    assert sum((labels.tolist() for _, labels in again), []) == seen  # ... fixed by the seed


def test_channels_last_batches_hold_the_same_values() -> None:
    split = random_split(20, 3, 16)
    preprocessing = Preprocessing(3, (16, 16), pad=1, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    plain = BatchLoader(split, preprocessing, batch_size=6, device=CPU)
    fast = BatchLoader(split, preprocessing, batch_size=6, device=CPU, channels_last=True, drop_last=True)
    assert len(fast) == 3
    for (a, labels_a), (b, labels_b) in zip(plain, fast):
        assert b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(labels_a, labels_b)


def test_evaluate_equals_a_per_sample_loop() -> None:
    torch.manual_seed(0)
    split = random_split(50, 1, 28, seed=1)
    split = ImageTensors(split.images, torch.randint(0, 10, (50,)), tuple(str(i) for i in range(10)))
    preprocessing = Preprocessing(1, (28, 28), pad=2, mean=(0.13,), std=(0.31,))
    model = build_model("lenet5", num_classes=10, in_channels=1).eval()
    result = evaluate(model, BatchLoader(split, preprocessing, batch_size=7, device=CPU), 10)
    normalize = v2.Compose([v2.Pad(2), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.13], [0.31])])
    losses, top1, top5 = [], 0, 0
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    with torch.no_grad():
        for image, label in zip(split.images, split.labels.tolist()):
            logits = model(normalize(image).unsqueeze(0))[0]
            losses.append(float(F.cross_entropy(logits.unsqueeze(0), torch.tensor([label]))))
            ranked = logits.argsort(descending=True).tolist()
            top1 += ranked[0] == label
            top5 += label in ranked[:5]
            confusion[label, ranked[0]] += 1
    assert result.count == 50
    assert result.loss == pytest.approx(sum(losses) / 50, rel=1e-5)
    assert result.top1 == pytest.approx(top1 / 50) and result.top5 == pytest.approx(top5 / 50)
    assert torch.equal(result.confusion.to(torch.int64), confusion)


@pytest.fixture()
def image_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    """Grey 28×28 PNGs, a larger RGB PNG and a JPEG (converted and resized on decode), and a broken file."""
    from torchvision.io import encode_jpeg, encode_png

    generator = torch.Generator().manual_seed(5)
    folder = tmp_path / "images"
    folder.mkdir()
    names = []
    for index in range(9):
        image = torch.randint(0, 256, (1, 28, 28), generator=generator, dtype=torch.uint8)
        names.append(f"{index:02d}.png")
        (folder / names[-1]).write_bytes(encode_png(image).numpy().tobytes())
    colour = torch.randint(0, 256, (3, 64, 48), generator=generator, dtype=torch.uint8)
    (folder / "10-colour.png").write_bytes(encode_png(colour).numpy().tobytes())
    (folder / "11-photo.jpg").write_bytes(encode_jpeg(colour).numpy().tobytes())
    (folder / "05-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder, names


def straightforward_probabilities(path: Path, model: torch.nn.Module, preprocessing: Preprocessing) -> torch.Tensor:
    """One file at a time, the way a tutorial would do it: read and decode (cnnctl's single-file reader, so colour
    becomes grey exactly as for training folders), resize, pad, normalise, softmax."""
    from cnnctl.data.images import read_image

    image = read_image(path, channels=preprocessing.channels)
    transform = v2.Compose([
        v2.Resize(list(preprocessing.image_size), antialias=True),
        v2.Pad(preprocessing.pad),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
    ])
    with torch.no_grad():
        return model(transform(image).unsqueeze(0)).softmax(1)[0]


@pytest.mark.parametrize("threshold", [0, 1 << 30], ids=["every-file-in-the-pool", "every-file-inline"])
def test_predictor_equals_one_file_at_a_time(image_folder, threshold, monkeypatch) -> None:
    monkeypatch.setattr(predict_module, "PARALLEL_DECODE_BYTES", threshold)
    folder, _ = image_folder
    torch.manual_seed(1)
    model = build_model("lenet5", num_classes=10, in_channels=1).eval()
    preprocessing = Preprocessing(1, (28, 28), pad=2, mean=(0.13,), std=(0.31,))
    meta = CheckpointMeta(arch="lenet5", arch_args={}, classes=[f"c{i}" for i in range(10)],
                          preprocessing=preprocessing)
    files, _ = find_images([folder])
    predictor = Predictor(model, meta, batch_size=4, topk=3, workers=2)
    predictions = list(predictor.predict_files(files))
    assert [p.path for p in predictions] == [str(f) for f in files]  # order kept across batches
    for prediction, path in zip(predictions, files):
        if path.name == "05-broken.png":
            assert prediction.error and "05-broken.png" in prediction.error and prediction.label is None
            continue
        expected = straightforward_probabilities(path, model, preprocessing)
        top_p, top_i = expected.topk(3)
        assert [c for c, _, _ in prediction.topk] == top_i.tolist()
        assert [p for _, _, p in prediction.topk] == pytest.approx(top_p.tolist(), abs=1e-6)
        assert prediction.label == top_i[0] and prediction.class_name == f"c{top_i[0]}"
    assert predictor.timings["decode_s"] > 0 and predictor.timings["inference_s"] > 0


def test_benchmark_legs_run_on_a_tiny_dataset(tiny_digits, tmp_path: Path, monkeypatch) -> None:
    """The tutorial and compute-limit legs train the same network on the same data (tiny here)."""
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    monkeypatch.setattr(sys, "path", sys.path)
    import legs

    from cnnctl.data.splits import dataset_directory

    directory = dataset_directory(tiny_digits, root=None, mirror=None, log=lambda _: None)
    args = legs.argparse.Namespace(data=str(directory), work=str(tmp_path), epochs=2, batch_size=32, threads=None,
                                   channels_last=None, batch_norm=True, root=os.environ["CNNCTL_DATA"],
                                   dataset="tinydigits")
    tutorial = legs.tutorial_leg(args)
    assert tutorial["images"] == 1200 and len(tutorial["epoch_s"]) == 2
    compute = legs.compute_leg(args)
    assert compute["images"] == 1000 and compute["batch_size"] == 32  # 200 held out for validation
