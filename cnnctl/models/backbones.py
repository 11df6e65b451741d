"""The pretrained backbones this machine has without a network: what ``cnnctl probe`` chooses from.

Four places hold them:

- torchvision's weight files in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), each checked against the
  SHA-256 prefix in its name (a truncated or altered file is not offered);
- timm's weights in the Hugging Face cache (``models--timm--NAME.TAG``);
- installed weights packages (:mod:`cnnctl.models.weight_packages`);
- files named with ``--weights ARCH=FILE``.

Each is a :class:`Candidate`: the architecture and the ``--pretrained`` value that loads it, so the command that
fine-tunes the winner is ``cnnctl train ARCH --pretrained VALUE``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cnnctl.errors import UsageError
from cnnctl.models.timm_models import HF_FILES, _hub_cache
from cnnctl.models.torchvision_zoo import ZOO, registered_name
from cnnctl.models.weight_packages import installed
from cnnctl.models.weights import hub_checkpoints, resolve_torchvision, verify_cached
from cnnctl.registry import get_model_spec

Log = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    arch: str  # cnnctl's name
    pretrained: str  # the --pretrained value: imagenet, a weights name, or a file
    source: str  # where the weights are, for people: "torch hub cache", "Hugging Face cache", "package X", "file"
    file: Path | None = None


def torchvision_cached(log: Log = lambda _: None) -> list[Candidate]:
    """torchvision weights present in torch.hub's cache whose content matches the hash in their name; one per
    architecture (its recommended weights when several are there)."""
    folder = hub_checkpoints()
    if not folder.is_dir():
        return []
    present = {path.name for path in folder.iterdir()}
    found = []
    for entry in ZOO:
        try:
            from torchvision.models import get_model_weights

            enum = get_model_weights(entry.tv_name)
        except (ValueError, KeyError):
            continue
        members = sorted(enum, key=lambda member: member is not enum.DEFAULT)  # the recommended one first
        for member in members:
            name = Path(member.url).name
            if name not in present:
                continue
            arch = registered_name(entry.tv_name)
            weights = resolve_torchvision(arch, entry.tv_name, member.name)
            if not verify_cached(folder / name, weights):
                log(f"probe: {folder / name} does not match the hash in its name; left out")
                continue
            value = "imagenet" if member is enum.DEFAULT else member.name
            found.append(Candidate(arch, value, "torch hub cache", folder / name))
            break
    return found


def timm_cached() -> list[Candidate]:
    """timm weights in the Hugging Face cache (a snapshot holding model.safetensors or pytorch_model.bin)."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    cache = Path(_hub_cache())
    if not cache.is_dir():
        return []
    found = []
    for folder in sorted(cache.glob("models--timm--*")):
        name = folder.name.removeprefix("models--timm--")
        if not timm.is_model(name.partition(".")[0]):
            continue
        for file in HF_FILES:
            cached = try_to_load_from_cache(f"timm/{name}", file, cache_dir=str(cache))
            if isinstance(cached, str):
                found.append(Candidate(f"timm:{name}", "imagenet", "Hugging Face cache", Path(cached)))
                break
    return found


def packaged() -> list[Candidate]:
    """Installed weights packages, as ``--pretrained imagenet`` of the architecture they hold."""
    return [Candidate(entry.arch, "imagenet", f"package {entry.package}", path) for entry, path in installed()]


def parse_weights_option(values: Sequence[str]) -> list[Candidate]:
    """``--weights ARCH=FILE`` values, checked (a known architecture, an existing file) before any work."""
    found = []
    for value in values:
        arch, equals, file = value.partition("=")
        if not equals or not arch.strip() or not file.strip():
            raise UsageError(f"--weights {value}: expected ARCH=FILE", hint="e.g. --weights resnet18=resnet18.pth")
        spec = get_model_spec(arch.strip())
        path = Path(file.strip()).expanduser()
        if not path.is_file():
            raise UsageError(f"--weights {value}: {path} is not a file")
        found.append(Candidate(spec.name, str(path), "file", path))
    return found


def offline_backbones(extra: Sequence[str] = (), log: Log = lambda _: None) -> list[Candidate]:
    """Every backbone available without a network, explicit files first, one per architecture and weights."""
    candidates = [*parse_weights_option(extra), *packaged(), *timm_cached(), *torchvision_cached(log)]
    unique: dict[str, Candidate] = {}
    for candidate in candidates:
        unique.setdefault(f"{candidate.arch.partition('.')[0]}|{candidate.pretrained}", candidate)
    return list(unique.values())


def select(candidates: Sequence[Candidate], names: Sequence[str]) -> list[Candidate]:
    """The candidates ``names`` ask for (architecture names, with or without ``timm:``'s weights tag); a name
    not among them is one error listing those that are."""
    if not names:
        return list(candidates)
    chosen = []
    for name in names:
        wanted = name.strip()
        match = [c for c in candidates if wanted in (c.arch, c.arch.partition(".")[0])]
        if not match:
            available = ", ".join(c.arch for c in candidates) or "none"
            raise UsageError(f"--backbone {wanted}: no weights for it on this machine (available offline: "
                             f"{available})", hint="put its weights file in torch's or the Hugging Face cache, "
                                                   "install its weights package, or pass --weights ARCH=FILE")
        chosen += [c for c in match if c not in chosen]
    return chosen
