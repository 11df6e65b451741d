"""JPEG decoders side by side, on the two cases cnnctl decodes: photos for predict and small files for folders.

    python benchmarks/decoders.py --photos DIR --small DIR64 DIR224 [--files 60] [--rounds 3]

(a) **predict**: multi-megapixel photos to a 224×224 RGB uint8 tensor (decode + antialiased resize, what
``cnnctl predict`` does for a 224-input model); (b) **folder**: small JPEGs (64², 224²) decoded to an RGB uint8
tensor, no resize (a folder decoded at its own size). Every decoder runs over the same files in memory (no disk
reads timed), one thread, in rounds whose order rotates; each line shows the median files/s over the rounds and
the median of the per-round ratios to torchvision.io's ``decode_jpeg`` (the decoder cnnctl used for JPEGs). For
the predict case it also shows how far each result is from torchvision.io's full decode + resize (mean and
largest absolute difference in grey levels, over all pixels of all files).

Decoders that are not installed are listed as such: TorchCodec (``torchcodec.decoders.decode_jpeg``),
simplejpeg, Pillow-SIMD (replaces Pillow; measured as "Pillow" when it is the installed one). The load average
is printed before and after: the machine is shared, so compare the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def pillow_decode(data: bytes, draft_to: tuple[int, int] | None = None):
    """Pillow: RGB uint8 3×H×W; ``draft_to`` (W, H) asks libjpeg for a DCT-scaled decode at least that size."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if draft_to is not None:
            image.draft("RGB", draft_to)
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def candidates(size: int | None) -> tuple[dict[str, Callable[[Path, bytes], object]], dict[str, str]]:
    """name → decode(path, data); ``size`` resizes to size×size after decoding (None: decode only)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    from cnnctl.data import images as cnnctl_images

    def fit(image):
        return image if size is None else TF.resize(image, [size, size], antialias=True)

    def tensor(data: bytes):
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    found: dict[str, Callable[[Path, bytes], object]] = {
        "torchvision.io decode_jpeg": lambda path, data: fit(decode_jpeg(tensor(data), mode=ImageReadMode.RGB)),
        "Pillow": lambda path, data: fit(pillow_decode(data)),
    }
    missing: dict[str, str] = {}
    if size is not None:
        found["Pillow draft() at >= 1x the target"] = lambda path, data: fit(pillow_decode(data, (size, size)))
        found["Pillow draft() at >= 2x the target"] = lambda path, data: fit(pillow_decode(data, (2 * size,) * 2))
    try:
        from torchcodec.decoders import decode_jpeg as codec_decode_jpeg

        found["TorchCodec decode_jpeg"] = lambda path, data: fit(codec_decode_jpeg(tensor(data), mode="RGB"))
    except ImportError as error:
        missing["TorchCodec"] = f"not importable ({error})"
    try:
        import simplejpeg

        found["simplejpeg"] = lambda path, data: fit(
            torch.from_numpy(simplejpeg.decode_jpeg(data, colorspace="RGB")).permute(2, 0, 1))
        if size is not None:
            found["simplejpeg min_height/width 2x (DCT scaled)"] = lambda path, data: fit(torch.from_numpy(
                simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=2 * size, min_width=2 * size)
            ).permute(2, 0, 1))
    except ImportError as error:
        missing["simplejpeg"] = f"not importable ({error})"
    import PIL

    if "post" in PIL.__version__ or "simd" in PIL.__version__.lower():
        found["Pillow-SIMD"] = found.pop("Pillow")
    else:
        missing["Pillow-SIMD"] = f"not installed (Pillow {PIL.__version__} is the stock build)"
    if size is None:
        found["cnnctl decode_image_bytes"] = lambda path, data: cnnctl_images.decode_image_bytes(data, path, 3)
    else:  # what predict calls: header check, reduced-size decode where it applies, EXIF orientation, resize
        target = cnnctl_images.ResizeTarget((size, size))
        found["cnnctl decode_to_target (predict's decode)"] = lambda path, data: cnnctl_images.decode_to_target(
            data, path, target, 3)
    return found, missing


def measure(label: str, files: list[Path], size: int | None, rounds: int) -> dict:
    """Median files/s per decoder over ``rounds`` rotating rounds, and the median paired ratio to torchvision.io."""
    import torch

    blobs = [(path, path.read_bytes()) for path in files]
    decoders, missing = candidates(size)
    names = list(decoders)
    reference = "torchvision.io decode_jpeg"
    rates: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        order = names[number % len(names):] + names[:number % len(names)]
        for name in order:
            decode = decoders[name]
            decode(*blobs[0])  # warm: imports, first-call set-up
            started = time.perf_counter()
            for path, data in blobs:
                decode(path, data)
            rates[name].append(len(blobs) / (time.perf_counter() - started))
    rows = {}
    for name in names:
        ratios = [mine / base for mine, base in zip(rates[name], rates[reference])]
        rows[name] = {"files_per_s": statistics.median(rates[name]), "vs_torchvision": statistics.median(ratios)}
    if size is not None:  # how far each result is from the full decode + resize
        expected = [decoders[reference](path, data).to(torch.int16) for path, data in blobs]
        for name in names:
            got = [decoders[name](path, data).to(torch.int16) for path, data in blobs]
            differences = torch.cat([(a - b).abs().flatten() for a, b in zip(got, expected)]).float()
            rows[name]["mean_abs"] = float(differences.mean())
            rows[name]["max_abs"] = int(differences.max())
    return {"case": label, "files": len(blobs), "rows": rows, "missing": missing}


def render(result: dict) -> list[str]:
    lines = [f"{result['case']} ({result['files']} files)"]
    with_difference = any("mean_abs" in row for row in result["rows"].values())
    header = f"  {'decoder':<48} {'files/s':>8} {'vs tv.io':>9}"
    lines.append(header + ("  mean|max abs diff vs tv.io full" if with_difference else ""))
    for name, row in result["rows"].items():
        line = f"  {name:<48} {row['files_per_s']:>8.1f} {row['vs_torchvision']:>8.2f}x"
        if "mean_abs" in row:
            line += f"  {row['mean_abs']:.3f} | {row['max_abs']}"
        lines.append(line)
    for name, why in result["missing"].items():
        lines.append(f"  {name}: {why}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", help="folder of multi-megapixel JPEGs (image_legs.py make-photos)")
    parser.add_argument("--small", nargs="*", default=[], help="folders of small JPEGs (image_legs.py make-folder)")
    parser.add_argument("--files", type=int, default=60, help="files per case")
    parser.add_argument("--size", type=int, default=224, help="the model's input size (predict case)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import PIL
    import torchvision

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, "
          f"{args.threads} thread(s), {args.rounds} rounds; load average before: {load_average()}")
    results = []
    if args.photos:
        files = sorted(Path(args.photos).rglob("*.jpg"))[:args.files]
        from PIL import Image

        megapixels = [Image.open(path).size for path in files]
        label = (f"(a) predict: photos of {min(w * h for w, h in megapixels) / 1e6:.1f}-"
                 f"{max(w * h for w, h in megapixels) / 1e6:.1f} MP → {args.size}x{args.size}, decode + resize")
        results.append(measure(label, files, args.size, args.rounds))
    for folder in args.small:
        files = sorted(Path(folder).rglob("*.jpg"))[:args.files * 10]
        from PIL import Image

        width, height = Image.open(files[0]).size
        results.append(measure(f"(b) folder: {width}x{height} JPEGs, decode only", files, None, args.rounds))
    for result in results:
        print("\n".join(render(result)))
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
