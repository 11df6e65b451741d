"""Published ImageNet weights (``--pretrained imagenet``): which file, where it is cached, how it is fetched and
verified, and the preprocessing it was trained with.

torchvision's weights are resolved through ``torchvision.models.get_model_weights(name)``: the URL, the file name
and the SHA-256 prefix in it come from torchvision, never from here. Files live where torch.hub keeps them
(``$TORCH_HOME/hub/checkpoints``, same names), so weights any other tool fetched are reused, and they are fetched
by :mod:`cnnctl.data.download` (mirrors first, resumable ``.part`` files renamed only once verified, a progress
bar). Unlike torch.hub, the SHA-256 prefix is checked on every use of a cached file, not only after a download:
a truncated or altered file is reported and fetched again (or named, offline).

timm weights (``timm:NAME``) are resolved in :mod:`cnnctl.models.timm_models`; this module holds what they share.
"""

from __future__ import annotations

import functools
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnctl.data.base import Preprocessing
from cnnctl.data.download import RemoteFile, _is_url, ensure_files, offline_requested, verify_file
from cnnctl.errors import CnnctlError, DownloadError, UsageError
from cnnctl.models.torchvision_zoo import ZOO, registered_name
from cnnctl.models.weights_file import read_weights
from cnnctl.registry import get_model_spec, suggest

IMAGENET_NAMES = ("imagenet", "imagenet1k", "default")  # --pretrained values meaning "the recommended weights"
MIRROR_ENV = "CNNCTL_WEIGHTS_MIRROR"
WEIGHTS_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# torch.hub's rule for the hash in a weights file name (torch.hub.HASH_REGEX), kept here so that naming a file
# needs no torch import
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")

Log = Callable[[str], None]


@dataclass(frozen=True)
class WeightsPreprocessing:
    """What the weights were trained with: normalisation, resize (shorter side), centre crop, interpolation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int
    crop: tuple[int, int]
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class PublishedWeights:
    """One set of published weights for one architecture."""

    arch: str  # cnnctl's name for the architecture
    source: str  # "torchvision" or "timm"
    label: str  # e.g. "MobileNet_V3_Small_Weights.IMAGENET1K_V1" or "timm/xception41.tf_in1k"
    file_name: str
    url: str | None
    sha256_prefix: str | None
    preprocessing: WeightsPreprocessing
    top1: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        accuracy = f", ImageNet top-1 {self.top1:.2f}%" if self.top1 is not None else ""
        return f"{self.label} ({self.source}{accuracy})"


@dataclass(frozen=True)
class WeightsSource:
    """Published weights other than torchvision's: how a source resolves ``--pretrained`` for one of its
    architectures and, optionally, fetches a file itself. Registered by the module of that source's
    architectures (:mod:`cnnctl.models.timm_models`), which is imported whenever one of them is named."""

    resolve: Callable[[Any, str], PublishedWeights]
    fetch: Callable[..., Path] | None = None


_SOURCES: dict[str, WeightsSource] = {}


def register_weights_source(source: str, *, resolve: Callable[[Any, str], PublishedWeights],
                            fetch: Callable[..., Path] | None = None) -> None:
    _SOURCES[source] = WeightsSource(resolve, fetch)


def is_weights_name(value: str) -> bool:
    """True when ``--pretrained`` names published weights rather than a file: not an existing path, no folder
    separator, no weights-file suffix (``imagenet``, ``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``)."""
    if not value or Path(value).expanduser().exists() or "/" in value or os.sep in value:
        return False
    return Path(value).suffix.lower() not in WEIGHTS_FILE_SUFFIXES


def offline(explicit: bool = False) -> bool:
    return explicit or offline_requested()


# --------------------------------------------------------------------------------------------------------------
# torchvision


def _zoo_entry(arch: str) -> Any:
    return next((entry for entry in ZOO if registered_name(entry.tv_name) == arch), None)


def torchvision_weights_enum(tv_name: str) -> Any:
    from torchvision.models import get_model_weights

    return get_model_weights(tv_name)


def _choose_member(enum: Any, value: str, arch: str) -> Any:
    wanted = value.strip()
    if wanted.lower() in IMAGENET_NAMES:
        return enum.DEFAULT
    if "." in wanted:  # "ResNet50_Weights.IMAGENET1K_V2"
        prefix, _, wanted = wanted.rpartition(".")
        if prefix != enum.__name__:
            raise UsageError(f"--pretrained {value}: {arch}'s weights are {enum.__name__}, not {prefix}")
    members = {member.name: member for member in enum}
    if wanted.upper() in members:
        return members[wanted.upper()]
    raise suggest(value, ["imagenet", "DEFAULT", *members], f"--pretrained for {arch}: weights")


def resolve_torchvision(arch: str, tv_name: str, value: str) -> PublishedWeights:
    enum = torchvision_weights_enum(tv_name)
    member = _choose_member(enum, value, arch)
    transforms = member.transforms()
    file_name = Path(urllib.parse.urlparse(member.url).path).name
    found = HASH_IN_NAME.search(file_name)
    metrics = member.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return PublishedWeights(
        arch=arch, source="torchvision", label=f"{enum.__name__}.{member.name}", file_name=file_name,
        url=member.url, sha256_prefix=found.group(1) if found and found.group(1) else None,
        preprocessing=WeightsPreprocessing(
            mean=tuple(float(v) for v in transforms.mean), std=tuple(float(v) for v in transforms.std),
            resize=int(transforms.resize_size[0]), crop=(int(transforms.crop_size[0]),) * 2,
            interpolation=str(transforms.interpolation.value)),
        top1=metrics.get("acc@1"), extra={"tv_name": tv_name, "num_classes": len(member.meta["categories"])},
    )


def resolve(arch: str, value: str) -> PublishedWeights:
    """The published weights ``--pretrained value`` means for ``arch`` (a registered name); one-line errors
    for architectures without published weights and for unknown weight names."""
    spec = get_model_spec(arch)
    if spec.source in _SOURCES:
        return _SOURCES[spec.source].resolve(spec, value)
    entry = _zoo_entry(spec.name) if spec.source == "torchvision" else None
    if entry is None:
        if _zoo_entry(f"tv:{spec.name}") is not None:
            raise UsageError(f"{spec.name} is cnnctl's small-image version and has no published ImageNet weights",
                             hint=f"the ImageNet version, tv:{spec.name}, has them")
        raise UsageError(f"{spec.name} has no published ImageNet weights",
                         hint="pick a torchvision architecture (`cnnctl list` shows which have them) or "
                              "timm:NAME, or pass a weights file to --pretrained")
    return resolve_torchvision(spec.name, entry.tv_name, value)


def local_imagenet_weights(arch: str, path: str | Path) -> PublishedWeights:
    """A local file holding ``arch``'s ImageNet weights (a copy, or the same network converted from another
    library), described with the preprocessing of the architecture's published weights, so that
    :func:`run_preprocessing` and predictions apply what those weights expect. Whether the file really holds
    ImageNet weights is the caller's call (its classifier's class count says it)."""
    published = resolve_cached(arch, "imagenet")
    return PublishedWeights(
        arch=published.arch, source="file", label=f"{Path(path).name} (preprocessing of {published.label})",
        file_name=Path(path).name, url=None, sha256_prefix=None, preprocessing=published.preprocessing,
        extra={"file": str(path), "preprocessing_of": published.label,
               "num_classes": published.extra.get("num_classes")})


# --------------------------------------------------------------------------------------------------------------
# the cache and fetching


def hub_checkpoints() -> Path:
    """torch.hub's weights folder: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def official_sources(weights: PublishedWeights) -> list[str]:
    """Where the file is published (the folder of its URL); folders and URLs given by the user come first."""
    return [weights.url.rsplit("/", 1)[0]] if weights.url else []


def _remote(weights: PublishedWeights) -> Any:
    return RemoteFile(weights.file_name, file_sha256_prefix=weights.sha256_prefix)


def verify_cached(path: Path, weights: PublishedWeights) -> bool:
    return verify_file(path, _remote(weights))


def ensure_weights_file(weights: PublishedWeights, *, mirror: str | None = None, dest: str | Path | None = None,
                        offline_only: bool = False, log: Log = lambda _: None,
                        progress: bool | None = None) -> Path:
    """The verified local file of ``weights``: the cached copy if it still matches the SHA-256 prefix in its
    name, else fetched (``mirror`` / ``$CNNCTL_WEIGHTS_MIRROR`` first, then the official URL). Offline, only a
    folder mirror may be used, and a missing file is one error naming the file and the folder to put it in."""
    if weights.source in _SOURCES and _SOURCES[weights.source].fetch is not None and weights.extra.get("hf_hub_id"):
        fetch = _SOURCES[weights.source].fetch  # timm weights on the Hugging Face hub
        return fetch(weights, mirror=mirror, dest=dest, offline=offline(offline_only), log=log)
    directory = Path(dest).expanduser() if dest else hub_checkpoints()
    path = directory / weights.file_name
    damaged = False
    if path.is_file():
        if verify_cached(path, weights):
            return path
        damaged = True
    chosen = mirror or os.environ.get(MIRROR_ENV, "")
    no_network = offline(offline_only)
    if no_network and (not chosen or _is_url(chosen)):
        where = (f"{path} does not match the SHA-256 prefix {weights.sha256_prefix} in its name (truncated or "
                 "altered)" if damaged else f"{weights.file_name} ({weights.label}) is not in {directory}")
        raise DownloadError(
            f"{where} and --offline forbids downloading it",
            hint=f"copy {weights.file_name} into {directory} (`cnnctl download weights {weights.arch}` fetches it "
                 "on a connected machine), or pass --weights-mirror FOLDER")
    if damaged:
        log(f"{path} does not match the SHA-256 prefix {weights.sha256_prefix} in its name (truncated or altered); "
            "fetching it again")
        path.unlink(missing_ok=True)
    official = [] if no_network else official_sources(weights)
    try:
        ensure_files(directory.name, [_remote(weights)], official, root=directory.parent, mirror=chosen or None,
                     log=log, progress=progress, report_present=False, mirror_env=MIRROR_ENV)
    except DownloadError as error:
        raise DownloadError(f"{weights.label}: {error.message}",
                            hint=f"pass --weights-mirror URL_OR_FOLDER (env {MIRROR_ENV}) holding "
                                 f"{weights.file_name}, or copy it into {directory}") from error
    if not verify_cached(path, weights):  # what ensure_files promoted, hashed once more before it is used
        raise DownloadError(f"{path} does not match the SHA-256 prefix {weights.sha256_prefix} in its name")
    return path


# --------------------------------------------------------------------------------------------------------------
# a training run's view


@functools.lru_cache(maxsize=16)
def resolve_cached(arch: str, value: str) -> PublishedWeights:
    """:func:`resolve`, once per run (data preparation and model loading both need it)."""
    return resolve(arch, value)


def weights_for_config(config: Any) -> PublishedWeights | None:
    """The published weights a training configuration starts from, or None (no --pretrained, or a file)."""
    if not config.pretrained or not is_weights_name(str(config.pretrained)):
        return None
    return resolve_cached(config.arch, str(config.pretrained))


def imagenet_weights_for_config(config: Any) -> PublishedWeights | None:
    """The ImageNet weights a run fine-tunes, carrying the preprocessing they expect: published weights named by
    ``--pretrained``, or a local file holding the architecture's ImageNet weights (see
    :func:`imagenet_file_weights`); None otherwise."""
    named = weights_for_config(config)
    if named is not None or not config.pretrained:
        return named
    return imagenet_file_weights(config.arch, str(config.pretrained))


@functools.lru_cache(maxsize=16)
def imagenet_file_weights(arch: str, path: str) -> PublishedWeights | None:
    """:func:`local_imagenet_weights` for a file that holds ImageNet weights of ``arch``: the architecture has
    published weights and the file's classifier (its last matrix) has their class count. Anything else (a cnnctl
    checkpoint trained on other classes, an unreadable file, an architecture without published weights) is
    None: its preprocessing is not known, and the data's own statistics are used."""
    try:
        published = resolve_cached(arch, "imagenet")
        tensors = read_weights(path)
    except (CnnctlError, OSError, ValueError):  # reported where the file is loaded
        return None
    matrices = [tensor for tensor in tensors.values() if tensor.ndim == 2]
    classes = published.extra.get("num_classes")
    if not matrices or classes is None or int(matrices[-1].shape[0]) != int(classes):
        return None
    return local_imagenet_weights(arch, path)


FINETUNE_MIN_IMAGE_SIZE = 96  # benchmarks/finetune.py: 64 loses accuracy; 128 and more cost time, gain nothing
IMAGE_SIZE_STEP = 32  # the networks' total stride


def finetune_image_size(image_side: int | None, weights_crop: int) -> int:
    """The input size when fine-tuning on a folder without ``--img-size``: the images' own shorter side rounded
    up to a multiple of 32, at least FINETUNE_MIN_IMAGE_SIZE (small images are upscaled: ImageNet features
    are made for objects tens of pixels wide) and at most the size the weights were trained at."""
    if not image_side:
        return weights_crop
    rounded = -(-image_side // IMAGE_SIZE_STEP) * IMAGE_SIZE_STEP
    return max(min(FINETUNE_MIN_IMAGE_SIZE, weights_crop), min(rounded, weights_crop))


def grey_input_mode(config: Any) -> str:
    """How grey images meet colour weights: ``replicate`` (default for ImageNet weights, published or a local
    file of them: the grey image is repeated into 3 channels, exactly how the weights saw grey photos) or
    ``sum`` (a 1-channel first convolution, its filters summed; the default for other weight files)."""
    if getattr(config, "grey_input", None):
        return str(config.grey_input)
    return "replicate" if imagenet_weights_for_config(config) is not None else "sum"


def run_preprocessing(weights: PublishedWeights, channels: int, image_size: tuple[int, int], *,
                      img_size: int | None, folder: bool, grey_input: str) -> Any:
    """The run's :class:`~cnnctl.data.base.Preprocessing` when fine-tuning ``weights``.

    Mean/std and interpolation are always the weights'. Image folders also get their resize and centre crop
    (``--img-size`` sets the crop and scales the resize with it); in-memory datasets (MNIST, CIFAR) keep their
    own size or ``--img-size``, since their images are already small crops. Grey data meets colour weights by
    ``grey_input`` (see :func:`grey_input_mode`)."""
    prep = weights.preprocessing
    mean, std = prep.mean, prep.std
    if channels == 1 and len(mean) == 3:
        if grey_input == "replicate":
            channels = 3
        else:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    extra = {"weights": weights.label, "weights_source": weights.source}
    if folder:
        crop = img_size or prep.crop[0]
        resize = round(crop * prep.resize / prep.crop[0])
        return Preprocessing(channels=channels, image_size=(crop, crop), mean=mean, std=std, extra=extra,
                             resize=resize, interpolation=prep.interpolation)
    size = (img_size, img_size) if img_size else image_size
    return Preprocessing(channels=channels, image_size=size, mean=mean, std=std, extra=extra,
                         interpolation=prep.interpolation)


def in_memory_preprocessing(config: Any, preprocessing: Any) -> Any:
    """A built-in dataset's preprocessing when fine-tuning ImageNet weights: theirs (see
    :func:`run_preprocessing`), at the size already chosen; unchanged without them. ``--normalize data`` keeps
    the dataset's own mean/std."""
    weights = imagenet_weights_for_config(config)
    if weights is None:
        return preprocessing
    prepared = run_preprocessing(weights, preprocessing.channels, preprocessing.image_size, img_size=None,
                                 folder=False, grey_input=grey_input_mode(config))
    if getattr(config, "normalize", None) == "data":
        return with_data_statistics(prepared, preprocessing.mean, preprocessing.std)
    return prepared


def with_data_statistics(preprocessing: Any, mean: Any, std: Any) -> Any:
    """``--normalize data``: ``preprocessing`` with the data's mean/std (a grey image's one value repeated when
    it is fed to 3 channels)."""
    import dataclasses

    mean, std = tuple(mean), tuple(std)
    if len(mean) == 1 and preprocessing.channels == 3:
        mean, std = mean * 3, std * 3
    return dataclasses.replace(preprocessing, mean=mean, std=std)
