"""Every timm architecture as ``timm:NAME`` (the optional extra ``cnnctl[timm]``), registered lazily.

Nothing is built or imported until a ``timm:`` name is used: the registry asks :func:`timm_spec` for it, which
reads the model's ``pretrained_cfg`` (input size, classifier, mean/std, crop) without building the network.
Models are built with ``timm.create_model(name, num_classes=, in_chans=)``; ``--pretrained imagenet`` loads the
weights the model's ``pretrained_cfg`` names: from the Hugging Face hub cache (``HF_HOME``; ``--offline`` and
``HF_HUB_OFFLINE`` use the cache only), from a ``--weights-mirror`` folder laid out as
``FOLDER/<hf_hub_id>/model.safetensors`` (what ``cnnctl download weights timm:NAME --dest FOLDER`` writes), or,
for the older models published as a URL, through torch's cache like torchvision's weights. Files are read by
cnnctl (safetensors, or ``torch.load(weights_only=True)``) and handed to timm, which adapts the classifier and
the first convolution; its data config (mean/std, input size, crop_pct, interpolation) becomes the preprocessing.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnctl.data.download import _is_url
from cnnctl.errors import DownloadError, UsageError
from cnnctl.fsutil import atomic_write_bytes
from cnnctl.models._adapt import first_conv_name
from cnnctl.models.torchvision_zoo import _catch_up_batch_norm
from cnnctl.models.weight_packages import package_weights_for
from cnnctl.models.weights import (
    HASH_IN_NAME,
    IMAGENET_NAMES,
    PublishedWeights,
    WeightsPreprocessing,
    register_weights_source,
)
from cnnctl.registry import ModelSpec, register_model_resolver, suggest

PREFIX = "timm:"
# names in tutorials written for older libraries (pretrainedmodels/Cadene) → timm's own
OTHER_SPELLINGS = {"se_resnext50_32x4d": "seresnext50_32x4d", "se_resnext101_32x4d": "seresnext101_32x4d",
                   "xception": "legacy_xception"}
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm() -> Any:
    try:
        import timm
    except ImportError as error:
        raise UsageError("timm: architectures need timm, which is not installed",
                         hint="pip install 'cnnctl[timm]'") from error
    return timm


def canonical_name(name: str) -> str:
    """``tf_efficientnet_b2.ap`` → ``tf_efficientnet_b2.ap_in1k``; tutorial spellings → timm's; unknown names
    are refused with the closest timm name."""
    timm = _timm()
    base, dot, tag = name.strip().partition(".")
    base = OTHER_SPELLINGS.get(base.lower(), base)
    if not timm.is_model(base):
        import difflib

        close = difflib.get_close_matches(base, timm.list_models(), n=1, cutoff=0.6)
        raise UsageError(f"unknown timm architecture {base!r}" + (f": did you mean timm:{close[0]}?" if close else ""),
                         hint=None if close else f"`cnnctl list --source timm '{base[:4]}*'` lists similar names")
    if not dot:
        return base
    tags = [full.partition(".")[2] for full in timm.list_pretrained(f"{base}.*")]
    if tag in tags:
        return f"{base}.{tag}"
    starting = [known for known in tags if known.startswith(tag)]
    if len(starting) == 1:
        return f"{base}.{starting[0]}"
    raise suggest(tag, tags or ["(none)"], f"weights tag for timm:{base}:")


def pretrained_cfg(name: str) -> Any:
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(name)


def build_timm(name: str, num_classes: int = 1000, in_channels: int = 3, dropout: float | None = None) -> Any:
    """``timm.create_model(name, num_classes=, in_chans=)`` (``dropout`` is timm's ``drop_rate``), with
    BatchNorm momentum raised to 0.1 for short runs as for torchvision's models."""
    options = {} if dropout is None else {"drop_rate": dropout}
    model = _timm().create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
    _catch_up_batch_norm(model)
    return model


def timm_spec(name: str) -> ModelSpec:
    """The registry entry for ``timm:name``, from its pretrained_cfg (nothing is built)."""
    full = canonical_name(name)
    cfg = pretrained_cfg(full)
    input_size = tuple(cfg.input_size[1:]) if cfg is not None else (224, 224)
    return ModelSpec(
        name=f"{PREFIX}{full}", builder=functools.partial(build_timm, full),
        description=f"timm {full}", family=full.partition(".")[0], input_size=input_size,  # type: ignore[arg-type]
        in_channels=3, fixed_input=bool(cfg is not None and cfg.fixed_input_size), min_input=32,
        source="timm", classifier=(cfg.classifier if cfg is not None and cfg.classifier else "fc"),
        aliases=(f"{PREFIX}{name}",) if name != full else (),
    )


register_model_resolver(PREFIX, timm_spec)


def list_timm(pattern: str = "*") -> list[dict[str, Any]]:
    """``cnnctl list --source timm [PATTERN]``: timm's names and their pretrained tags, nothing built."""
    timm = _timm()
    tags: dict[str, list[str]] = {}
    for full in timm.list_pretrained(pattern if "." in pattern else f"{pattern.rstrip('*')}*"
                                     if pattern != "*" else "*"):
        base, _, tag = full.partition(".")
        tags.setdefault(base, []).append(tag)
    return [{"name": f"{PREFIX}{name}", "pretrained": tags.get(name, [])}
            for name in timm.list_models(pattern.partition(".")[0] or "*")]


# --------------------------------------------------------------------------------------------------------------
# weights


def resolve_timm(spec: ModelSpec, value: str) -> Any:
    """The published weights of a ``timm:`` architecture: its own tag for ``imagenet``, or the tag ``value``."""
    full = spec.name[len(PREFIX):]
    if value.strip().lower() not in IMAGENET_NAMES:
        full = canonical_name(f"{full.partition('.')[0]}.{value.strip()}")
    cfg = pretrained_cfg(full)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise UsageError(f"timm publishes no weights for {full}",
                         hint=f"`cnnctl list --source timm {full.partition('.')[0]}` shows its weights tags")
    from timm.data import resolve_data_config

    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    crop = (int(data["input_size"][1]), int(data["input_size"][2]))
    resize = math.floor(crop[0] / float(data.get("crop_pct") or 1.0))  # timm's transforms_factory
    hub_id = cfg.hf_hub_id
    file_name = (cfg.hf_hub_filename or HF_FILES[0]) if hub_id else Path(str(cfg.url or cfg.file)).name
    found = HASH_IN_NAME.search(file_name) if not hub_id else None
    return PublishedWeights(
        arch=spec.name, source="timm", label=f"{hub_id}" if hub_id else f"timm {full}", file_name=file_name,
        url=None if hub_id else cfg.url, sha256_prefix=found.group(1) if found and found.group(1) else None,
        preprocessing=WeightsPreprocessing(mean=tuple(float(v) for v in data["mean"]),
                                           std=tuple(float(v) for v in data["std"]), resize=resize, crop=crop,
                                           interpolation=str(data.get("interpolation") or "bicubic")),
        extra={"timm_name": full, "hf_hub_id": hub_id, "num_classes": cfg.num_classes},
    )


def timm_class_names(name: str) -> list[str]:
    """The class names of timm weights ``name`` (``tf_efficientnet_lite0.in1k``): the ``label_names`` of their
    pretrained_cfg, else timm's bundled ImageNet descriptions for the label set it infers (ImageNet-1k, -12k,
    -22k; offline), else the class indices."""
    cfg = pretrained_cfg(name)
    if cfg is not None and cfg.label_names:
        return [str(label) for label in cfg.label_names]
    from timm.data import ImageNetInfo, infer_imagenet_subset

    count = int(cfg.num_classes) if cfg is not None and cfg.num_classes else 1000
    subset = infer_imagenet_subset(cfg.to_dict() if cfg is not None else {"num_classes": count})
    if subset:
        info = ImageNetInfo(subset)
        if info.num_classes() == count:
            return [info.index_to_description(index) for index in range(count)]
    return [str(index) for index in range(count)]


def _in_folder(folder: Path, hub_id: str) -> Path | None:
    for name in HF_FILES:
        candidate = folder / hub_id / name
        if candidate.is_file():
            return candidate
    return None


def fetch_hub_weights(weights: Any, *, mirror: str | None, dest: str | Path | None, offline: bool,
                      log: Callable[[str], None]) -> Path:
    """A hub-published timm weights file: from a mirror folder, ``dest`` (already there), or the Hugging Face
    cache / hub (``hf_hub_download``; cache only when offline)."""
    hub_id = weights.extra["hf_hub_id"]
    chosen = mirror or os.environ.get("CNNCTL_WEIGHTS_MIRROR", "")
    for folder in ([Path(chosen).expanduser()] if chosen and not _is_url(chosen) else []) + (
            [Path(dest).expanduser()] if dest else []):
        found = _in_folder(folder, hub_id)
        if found is not None:
            if dest and folder != Path(dest).expanduser():
                return _copy_into(found, Path(dest).expanduser() / hub_id / found.name, log)
            return found
    if chosen and _is_url(chosen):
        raise UsageError(f"--weights-mirror for timm weights must be a folder ({hub_id}/model.safetensors in it)",
                         hint="timm weights come from the Hugging Face hub or its cache (HF_HOME)")
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as error:
        raise UsageError("timm weights need huggingface_hub", hint="pip install 'cnnctl[timm]'") from error
    cache_dir = _hub_cache()
    packaged = None if dest else package_weights_for(weights.arch)
    if offline or packaged is not None or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in (
            "1", "true", "yes", "on"):
        for name in HF_FILES:  # a lookup in the cache folder only: no request at all
            cached = try_to_load_from_cache(hub_id, name, cache_dir=cache_dir)
            if isinstance(cached, str):
                return Path(cached) if not dest else _copy_into(Path(cached), Path(dest).expanduser() / hub_id
                                                                / name, log)
        if packaged is not None:  # an installed weights package (models/weight_packages.py)
            log(f"pretrained: {hub_id} is not in the Hugging Face cache; using {packaged[1]} from the installed "
                f"package {packaged[0].package}")
            return packaged[1]
        raise DownloadError(
            f"{hub_id}/{HF_FILES[0]} is not in the Hugging Face cache {cache_dir} and --offline forbids "
            "downloading it",
            hint=f"on a connected machine run `cnnctl download weights {weights.arch} --dest FOLDER`, copy FOLDER "
                 f"here and pass --weights-mirror FOLDER (it holds {hub_id}/{HF_FILES[0]})")
    local_dir = str(Path(dest).expanduser() / hub_id) if dest else None
    for name in HF_FILES:
        try:
            return Path(hf_hub_download(hub_id, name, local_dir=local_dir, cache_dir=cache_dir))
        except EntryNotFoundError:
            continue
        except (LocalEntryNotFoundError, OSError) as error:
            raise DownloadError(f"could not download {hub_id}/{name} from the Hugging Face hub "
                                f"({str(error).strip().splitlines()[0][:120] if str(error).strip() else 'no reason'})",
                                hint="pass --weights-mirror FOLDER holding it (FOLDER/<hub id>/model.safetensors)"
                                ) from error
    raise DownloadError(f"{hub_id} holds none of {', '.join(HF_FILES)}")


def _hub_cache() -> str:
    """The Hugging Face hub cache as the environment says now (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return explicit
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


def _copy_into(source: Path, target: Path, log: Callable[[str], None]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, source.read_bytes())
    log(f"copied {source} to {target}")
    return target


def timm_reference_state(model: Any, weights: Any, tensors: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The state dict timm builds for ``model``'s classes and input channels from a timm weights file's
    ``tensors`` (its own filter, classifier reset and first-convolution adaptation), and those input channels."""
    num_classes = int(model.num_classes)
    in_chans = _input_channels(model)
    reference = _timm().create_model(weights.extra["timm_name"], pretrained=True, num_classes=num_classes,
                                     in_chans=in_chans, pretrained_cfg_overlay={"state_dict": tensors})
    return reference.state_dict(), in_chans


def _input_channels(model: Any) -> int:
    return int(model.get_submodule(first_conv_name(model)).in_channels)


register_weights_source("timm", resolve=resolve_timm, fetch=fetch_hub_weights)
