"""Large JPEGs decoded at reduced size (libjpeg's DCT scaling) for predict and for image folders: nearly the
pixels of the full decode after the resize, the right way round after EXIF orientation, never smaller than the
resize needs, the same pixels in a folder's cache, its streamed batches and predict, and the same predictions from
a trained model."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cnnctl.data import images
from cnnctl.data.base import Preprocessing
from cnnctl.data.images import ResizeTarget, decode_image_bytes, decode_to_target, to_grey
from cnnctl.engine.predict import decode_bytes


@functools.lru_cache(maxsize=8)
def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A real photograph (scikit-learn's bundled ``china.jpg``) scaled to ``width``×``height`` with sensor-like
    noise in 2×2 cells, as a phone camera's output looks."""
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg")).resize((width, height), Image.BICUBIC)
    rng = np.random.default_rng(seed)
    noise = np.kron(rng.integers(-10, 11, (-(-height // 2), -(-width // 2), 3)), np.ones((2, 2, 1), np.int64))
    return (np.asarray(photo, np.int64) + noise[:height, :width]).clip(0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def _reduced(data: bytes, target: ResizeTarget) -> torch.Tensor | None:
    """The reduced-size decode itself (None: this file is decoded in full for ``target``)."""
    return images._read_reduced_jpeg(data, images.read_header(data, Path("x.jpg")), target)


def _full(monkeypatch: pytest.MonkeyPatch, decode, *args, **kwargs) -> torch.Tensor:
    with monkeypatch.context() as patch:
        patch.setattr(images, "REDUCED_JPEG_DECODE", False)
        return decode(*args, **kwargs)


@pytest.mark.parametrize(("stored", "size", "resize"), [
    ((2400, 1600), (224, 224), None), ((2400, 1600), (224, 224), 256), ((2400, 1600), (96, 160), None),
    ((1300, 975), (224, 224), None),  # 1/2 scale of a photo upscaled only 2x: its finest detail survives to 224
])
def test_reduced_decode_is_within_two_levels_of_the_full_decode(monkeypatch: pytest.MonkeyPatch,
                                                                 stored: tuple[int, int], size: tuple[int, int],
                                                                 resize: int | None) -> None:
    data = _jpeg(_photo(*stored))
    path = Path("photo.jpg")
    target = ResizeTarget(size, resize)
    reduced = _reduced(data, target)
    assert reduced is not None
    minimum = target.minimum()
    assert reduced.shape[1] >= minimum[0] and reduced.shape[2] >= minimum[1]
    assert reduced.shape[1] <= -(-stored[1] // 2)  # decoded at 1/2 scale or less, not in full
    preprocessing = Preprocessing(3, size, resize=resize)
    fast = decode_bytes(data, path, preprocessing).to(torch.int16)
    slow = _full(monkeypatch, decode_bytes, data, path, preprocessing).to(torch.int16)
    assert fast.shape == slow.shape == (3, *size)
    difference = (fast - slow).abs().float()
    assert difference.mean() <= 2.0, f"mean absolute difference {difference.mean():.2f} grey levels"
    assert difference.quantile(0.99) <= 16


@pytest.mark.parametrize("orientation", [6, 8])
def test_a_rotated_large_jpeg_comes_out_upright_and_large_enough(monkeypatch: pytest.MonkeyPatch,
                                                                 orientation: int) -> None:
    """Stored 2400×1600 with a tag turning it to 1600×2400. The shapes are chosen so that ignoring the turn would
    decode too small (a 448-wide resize of the upright image needs 896 of its 1600 columns: only 1/1 keeps that
    for the stored 1600 rows), and so that the turn itself is checked against Pillow's ``exif_transpose``."""
    upright = _photo(1600, 2400, seed=1)
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    data = _jpeg(np.asarray(Image.fromarray(upright).transpose(inverse)), orientation)
    path = Path("sideways.jpg")
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.size == (2400, 1600)
        expected = torch.from_numpy(np.asarray(ImageOps.exif_transpose(opened).convert("RGB")).copy())
    expected = expected.permute(2, 0, 1)
    assert expected.shape == (3, 2400, 1600)
    for size in [(160, 448), (224, 224), (400, 100)]:
        target = ResizeTarget(size)
        decoded = _reduced(data, target)
        if decoded is None:  # no scale of 1/2 or less keeps enough pixels: the full decode, upright
            decoded = decode_image_bytes(data, path, 3)
        need_height, need_width = target.minimum()
        assert decoded.shape[1] >= need_height and decoded.shape[2] >= need_width, (size, decoded.shape)
        assert decoded.shape[1] * 2 == decoded.shape[2] * 3  # upright: taller than wide, as exif_transpose says
        preprocessing = Preprocessing(3, size)
        fast = decode_bytes(data, path, preprocessing).to(torch.int16)
        slow = _full(monkeypatch, decode_bytes, data, path, preprocessing).to(torch.int16)
        assert (fast - slow).abs().float().mean() <= 2.0
        reference = images.resize_to(expected, size).to(torch.int16)  # the upright photo, independently resized
        assert (fast - reference).abs().float().mean() <= 3.0
    assert _reduced(data, ResizeTarget((224, 224))).shape == (3, 1200, 800)  # 1/2 scale
    assert _reduced(data, ResizeTarget((160, 448))) is None  # only 1/1 keeps 896 columns


def test_small_jpegs_grey_and_other_formats_decode_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no scale of 1/2 or less keeps enough pixels, or the file is not a JPEG, the result is bit-identical
    to the full decode; grey is Pillow's convert("L") of the RGB decode, reduced or not."""
    pixels = _photo(600, 400)
    for resize in (None, 256):
        preprocessing = Preprocessing(3, (224, 224), resize=resize)
        for data in (_jpeg(pixels), _png(pixels)):
            full = _full(monkeypatch, decode_bytes, data, Path("x"), preprocessing)
            assert torch.equal(decode_bytes(data, Path("x"), preprocessing), full)
    big = _jpeg(_photo(2400, 1600))
    target = ResizeTarget((224, 224))
    colour = _reduced(big, target)
    expected = np.asarray(Image.fromarray(colour.permute(1, 2, 0).numpy()).convert("L"))
    assert np.array_equal(to_grey(colour)[0].numpy(), expected)
    grey = decode_to_target(big, Path("big.jpg"), target, 1)
    assert grey.shape == (1, 224, 224)
    assert torch.equal(grey, images.resize_to(to_grey(colour), (224, 224)))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_trained_model_predicts_the_same_classes_on_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             one_thread: None) -> None:
    """A network trained on real MNIST digits predicts the same digit for 2-3 MP photos of test digits (colour
    paper and ink, noise) whether they are decoded in full or at reduced size."""
    from real_mnist import load_mnist, write_mnist_folder

    import cnnctl
    from cnnctl.engine.predict import Predictor, model_with_meta

    folder = write_mnist_folder(tmp_path / "digits", train_per_class=150, test_per_class=5)
    run = cnnctl.train("lenet5", data=str(folder), epochs=3, out=str(tmp_path / "runs"), plots=False)
    model, meta = model_with_meta(cnnctl.load(run)[0], "cpu", "test")
    digits, labels = load_mnist("test")
    chosen = [i for i in range(200) if labels[i] in (0, 1, 2, 3)][:24]
    rng = np.random.default_rng(2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for number, index in enumerate(chosen):
        ink, paper = rng.integers(170, 256, 3), rng.integers(0, 80, 3)  # light digits on dark, as MNIST
        alpha = np.asarray(Image.fromarray(digits[index]).resize((1800, 1350 + 10 * number), Image.BICUBIC),
                           np.float64)[..., None] / 255
        noise = rng.integers(-8, 9, (*alpha.shape[:2], 3))
        pixels = (alpha * ink + (1 - alpha) * paper + noise).clip(0, 255).astype(np.uint8)
        (photos / f"{number:02d}-{labels[index]}.jpg").write_bytes(_jpeg(pixels, orientation=1))
    files = sorted(photos.iterdir())
    size = tuple(meta.preprocessing.image_size)
    assert meta.preprocessing.resize is None
    assert _reduced(files[0].read_bytes(), ResizeTarget(size)).shape[1] == -(-1350 // 4)  # 1/4 scale
    truth = [int(path.stem.split("-")[1]) for path in files]
    reduced = [p.label for p in Predictor(model, meta).predict_files(files)]
    with monkeypatch.context() as patch:
        patch.setattr(images, "REDUCED_JPEG_DECODE", False)
        full = [p.label for p in Predictor(model, meta).predict_files(files)]
    assert reduced == full
    assert sum(label == true for label, true in zip(full, truth)) >= 0.8 * len(files)


@pytest.mark.parametrize(("size", "resize", "scale"), [((64, 64), None, 4), ((160, 160), 160, 2)])
def test_a_folder_decodes_large_jpegs_as_predict_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       size: tuple[int, int], resize: int | None, scale: int) -> None:
    """The folder cache, a streamed batch and predict give one file the same pixels (decoded at 1/``scale``),
    within two grey levels of the full decode; a copied file still has its original's digest."""
    from cnnctl.data.folder import decode_files
    from cnnctl.data.stream import StreamedImages, _StreamFiles

    files = []
    stored = [(1400, 1050), (1050, 1400), (1600, 900), (1400, 1050)]
    for number, (width, height) in enumerate(stored[:3]):
        path = tmp_path / f"{number}.jpg"
        path.write_bytes(_jpeg(_photo(width, height, seed=number), orientation=6 if number == 2 else 1))
        files.append(path)
    (tmp_path / "copy.jpg").write_bytes(files[0].read_bytes())
    files.append(tmp_path / "copy.jpg")
    target = ResizeTarget(size, resize)
    for path, (width, height) in zip(files, stored):
        assert _reduced(path.read_bytes(), target)[0].numel() == -(-width // scale) * -(-height // scale)
    cached = decode_files(files, size, workers=0, resize=resize)
    streamed = _StreamFiles(StreamedImages(tuple(files), torch.zeros(len(files)), ("a",), "x", size, resize=resize))
    preprocessing = Preprocessing(3, size, resize=resize)
    for position, path in enumerate(files):
        predicted = decode_bytes(path.read_bytes(), path, preprocessing)
        assert torch.equal(cached.images[position], predicted)
        assert torch.equal(streamed[position][1], predicted)
        full = _full(monkeypatch, decode_bytes, path.read_bytes(), path, preprocessing)
        assert (predicted.to(torch.int16) - full.to(torch.int16)).abs().float().mean() <= 2.0
    assert cached.infos[0].digest == cached.infos[3].digest != cached.infos[1].digest
    assert (cached.infos[2].width, cached.infos[2].height) == (1600, 900)  # the stored size, before the turn
