"""Image files as users have them: EXIF-rotated phone photos, colour → grey, and hostile files (a decompression
bomb, a 5,000-frame GIF, a FIFO, a link to /dev/zero, a symlinked folder leading to /)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cnnctl.data.folder import scan_folder
from cnnctl.data.images import read_image, to_grey
from cnnctl.errors import DataError

REPO = Path(__file__).resolve().parent.parent


def _asymmetric(height: int = 20, width: int = 30) -> np.ndarray:
    """An image whose every rotation and flip is different (a bright corner block, a green band)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:5, :8] = 255
    image[height // 2:, width * 2 // 3:, 1] = 200
    image[-3:, :4, 2] = 150
    return image


def _save_with_orientation(path: Path, pixels: np.ndarray, orientation: int, **options: object) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_as_pillow_does(tmp_path: Path, suffix: str, orientation: int) -> None:
    path = tmp_path / f"photo{suffix}"
    options = {"quality": 100} if suffix in (".jpg", ".webp") else {}
    _save_with_orientation(path, _asymmetric(), orientation, **options)
    with Image.open(path) as opened:
        expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB")).astype(int)
    decoded = read_image(path).permute(1, 2, 0).numpy().astype(int)
    assert decoded.shape == expected.shape  # 6 and 8 turn 20x30 into 30x20
    assert np.abs(decoded - expected).max() <= (0 if suffix in (".png", ".tif") else 3)


def test_colour_to_grey_rounds_as_pillow(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(pixels).save(path)
    expected = np.asarray(Image.open(path).convert("L"))
    assert np.array_equal(read_image(path, channels=1)[0].numpy(), expected)
    assert np.array_equal(to_grey(torch.from_numpy(pixels).permute(2, 0, 1))[0].numpy(), expected)
    grey = torch.from_numpy(pixels[..., :1].repeat(3, axis=2)).permute(2, 0, 1)
    assert torch.equal(to_grey(grey), grey[:1])  # equal channels stay exactly as they are


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((8, 8, 3), value, np.uint8)) for value in (10, 200, 90)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=10)
    assert int(read_image(path, channels=1).float().mean().round()) == 10


def _bomb_png(path: Path, side: int = 30_000) -> None:
    """A valid 1-bit PNG of side x side black pixels: ~110 kB on disk, 900 million pixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)
    body = b"".join(compressor.compress(row * 500) for _ in range(side // 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _long_gif(path: Path, frames: int = 5000) -> None:
    images = [Image.fromarray(np.full((2, 2), i % 2 * 255, np.uint8)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1)


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    _bomb_png(folder / "bomb.png")
    _long_gif(folder / "frames.gif")
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    Image.fromarray(_asymmetric()).save(folder / "fine.png")
    Image.fromarray(_asymmetric()).save(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"))  # not UTF-8
    return folder


def test_hostile_files_are_refused_from_their_header_or_type(hostile_folder: Path) -> None:
    with pytest.raises(DataError, match="900,000,000 pixels, more than the limit"):
        read_image(hostile_folder / "bomb.png")
    with pytest.raises(DataError, match=r"not a regular file \(a FIFO\)"):
        read_image(hostile_folder / "fifo.png")
    with pytest.raises(DataError, match=r"not a regular file \(a device\)"):
        read_image(hostile_folder / "zero.png")
    assert read_image(hostile_folder / "frames.gif").shape == (3, 2, 2)
    with pytest.raises(DataError, match="more than the limit of 100"):
        read_image(hostile_folder / "fine.png", max_pixels=100)


def _tiny_checkpoint(path: Path) -> Path:
    from cnnctl import checkpoint
    from cnnctl.data.base import Preprocessing
    from cnnctl.models import build_model

    torch.manual_seed(0)
    model = build_model("simplecnn", num_classes=2, in_channels=1)
    meta = checkpoint.CheckpointMeta("simplecnn", {}, ["a", "b"], Preprocessing(1, (28, 28)), dataset="folder")
    return checkpoint.save(path, model, meta)


def test_predict_on_hostile_files_gives_error_rows_in_bounded_memory(hostile_folder: Path, tmp_path: Path) -> None:
    model = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    # VmHWM is this program's own peak (ru_maxrss would also count the forked copy of pytest before exec)
    script = ("import sys\nfrom cnnctl.cli import main\ncode = 0\ntry:\n    main(sys.argv[1:])\n"
              "except SystemExit as e:\n    code = e.code or 0\n"
              "peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
              "print('maxrss_kb', peak, file=sys.stderr)\n"
              "sys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, "predict", str(model), str(hostile_folder), "--json"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    rows = {Path(row["path"]).name: row for row in json.loads(done.stdout)}
    assert set(rows) == {"bomb.png", "fifo.png", "zero.png", "frames.gif", "fine.png", "caf\\xe9.png"}
    assert "more than the limit" in rows["bomb.png"]["error"]
    assert "FIFO" in rows["fifo.png"]["error"] and "device" in rows["zero.png"]["error"]
    assert rows["frames.gif"]["error"] is None and rows["fine.png"]["error"] is None
    assert rows["caf\\xe9.png"]["error"] is None  # read, and named with its byte escaped
    peak_kb = int(done.stderr.rsplit("maxrss_kb", 1)[1].split()[0])
    assert peak_kb < 1.5 * 2**20, f"peak memory {peak_kb / 2**20:.2f} GiB"


def test_folder_scan_skips_special_files_and_links_out(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(_asymmetric() + index).save(root / name / f"{index}.png")
    os.mkfifo(root / "cat" / "fifo.png")
    (root / "dog" / "zero.jpg").symlink_to("/dev/zero")
    (root / "everything").symlink_to("/")  # a "class" that is the whole file system
    (root / "cat" / "more").symlink_to(root / "dog")  # a link inside the data folder is followed
    logged: list[str] = []
    scan = scan_folder(root, log=logged.append)
    assert scan.classes == ("cat", "dog")
    assert {p.name for p in scan.special} == {"fifo.png", "zero.jpg"}  # zero.jpg twice: dog/, cat/more/
    assert scan.outside_links == [root / "everything"]
    assert len([p for p, label in scan.splits["train"] if label == 0]) == 4  # cat's own two + dog's via the link
    assert any("not following 1 symlinked folder" in line for line in logged)


def test_predict_applies_exif_to_real_digits(tmp_path: Path) -> None:
    """Real MNIST digits stored sideways with an EXIF tag that turns them upright decode to the upright digit."""
    from real_mnist import load_mnist

    images, _ = load_mnist("test")
    inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    for index, orientation in enumerate((3, 6, 8) * 2):
        upright = Image.fromarray(images[index])
        path = tmp_path / f"digit{index}{'.jpg' if index % 2 else '.png'}"
        stored = np.asarray(upright.transpose(inverse[orientation]))  # what a sideways camera writes
        _save_with_orientation(path, stored, orientation, **({"quality": 100} if index % 2 else {}))
        decoded = read_image(path, channels=1)[0].numpy().astype(int)
        assert np.abs(decoded - images[index].astype(int)).max() <= (0 if path.suffix == ".png" else 8)


def test_header_check_reads_no_pixels(tmp_path: Path) -> None:
    """The pixel limit is applied to the header, before the decoder runs: a truncated bomb is refused for its
    size, not reported as truncated."""
    path = tmp_path / "bomb.png"
    _bomb_png(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="pixels, more than the limit"):
        read_image(path)
    buffer = io.BytesIO()
    Image.fromarray(_asymmetric()).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:-30])
    with pytest.raises(DataError, match="truncated|corrupt"):
        read_image(tmp_path / "cut.png")
