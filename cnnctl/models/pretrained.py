"""``--pretrained``: start training from published ImageNet weights (``imagenet`` or a weights name, fetched and
verified by :mod:`cnnctl.models.weights`) or from a local file (safetensors, or a plain ``.pth``/``.pt`` state
dict; nothing is downloaded for a file).

The file's tensors are matched to the model by name after stripping wrapper prefixes
(``module.`` from DataParallel, ``model.`` from Lightning, ``_orig_mod.`` from torch.compile, ``pretrain_``).
A ``.pth`` whose names are another library's (``_blocks.0._depthwise_conv.weight`` for timm's
``blocks.0.0.conv_dw.weight``) is paired by order instead, when every shape lines up one to one; the mapping is
reported and kept in the run's checkpoints. Either way the first convolution is adapted to the input channels
(3-channel filters summed for 1-channel images, as timm does), and a classifier whose shape differs (another
number of classes) keeps the new model's fresh initialisation.
Everything that did not load — missing keys, unexpected keys, the re-initialised head — is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint.format import COUNTER_SUFFIX
from cnnctl.errors import CheckpointError, UsageError
from cnnctl.models import weights as published
from cnnctl.models._adapt import adapt_input_conv, first_conv_name
from cnnctl.models.timm_models import timm_reference_state
from cnnctl.models.weights_file import (
    TORCH_SUFFIXES,
    read_weights,
)

if TYPE_CHECKING:
    import torch

    from cnnctl.models.weights import PublishedWeights

WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "pretrain_")
MAPPING_SHOWN = 3  # pairs of an order mapping named on the terminal


@dataclass
class PretrainedReport:
    """What happened to each tensor; ``lines()`` is what the user sees."""

    path: str
    loaded: list[str] = field(default_factory=list)
    stripped_prefixes: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # "name: 3 → 1 input channels"
    reinitialised: list[str] = field(default_factory=list)  # classifier keys kept at their fresh initialisation
    head_change: str = ""  # "1000 → 10 classes"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    matched_by: str = "name"  # or "order": the file's names differ from the model's, its shapes line up
    mapping: dict[str, str] = field(default_factory=dict)  # file key → model key, when matched by order

    def lines(self) -> list[str]:
        prefixes = f" (stripped prefix {', '.join(repr(p) for p in self.stripped_prefixes)})" \
            if self.stripped_prefixes else ""
        found = [f"pretrained: loaded {len(self.loaded)} tensors from {self.path}{prefixes}"]
        if self.mapping:
            first = ", ".join(f"{theirs} → {ours}" for theirs, ours in list(self.mapping.items())[:MAPPING_SHOWN])
            found.append(f"pretrained: the file's names differ from the model's; {len(self.mapping)} tensors paired "
                         f"by order, their shapes lining up one to one: {first}, ... (all pairs are kept in the "
                         "metadata's `pretrained.mapping`)")
        if self.adapted:
            found.append(f"pretrained: first convolution adapted: {'; '.join(self.adapted)}")
        if self.reinitialised:
            found.append(f"pretrained: classifier re-initialised ({self.head_change}): {', '.join(self.reinitialised)}")
        if self.missing:
            found.append(f"pretrained: {len(self.missing)} missing, left at their initial values: "
                         f"{', '.join(self.missing)}")
        if self.unexpected:
            found.append(f"pretrained: {len(self.unexpected)} unexpected, ignored: {', '.join(self.unexpected)}")
        return found

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps about the weights it started from (its metadata's ``pretrained``)."""
        return {"source": self.path, "matched_by": self.matched_by, "loaded": len(self.loaded),
                "adapted": list(self.adapted), "reinitialised": list(self.reinitialised),
                "missing": list(self.missing), "mapping": dict(self.mapping)}


def _strip_prefixes(key: str, known: set[str], stripped: list[str]) -> str:
    """Remove wrapper prefixes from ``key`` while it is not one of the model's own keys."""
    while key not in known:
        prefix = next((p for p in WRAPPER_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            break
        key = key[len(prefix):]
        if prefix not in stripped:
            stripped.append(prefix)
    return key


def load_pretrained(model: torch.nn.Module, spec: Any, path: str | Path,
                    log: Callable[[str], None] | None = None, config: Any = None) -> PretrainedReport:
    """Load the weights ``path`` names into ``model`` (built for ``spec``) as far as they fit; see the module
    docstring. ``path`` is a file, or published weights (``imagenet``, ``IMAGENET1K_V2``, ...) fetched with
    ``config``'s ``weights_mirror``/``offline``. Shape mismatches outside the classifier and the first
    convolution are errors (wrong architecture), as is a file none of whose tensors fit."""
    if published.is_weights_name(str(path)):
        found = published.resolve_cached(spec.name, str(path))
        file = published.ensure_weights_file(found, mirror=getattr(config, "weights_mirror", None),
                                             offline_only=bool(getattr(config, "offline", False)),
                                             log=log or (lambda _: None))
        if found.source == "timm":
            return load_timm_pretrained(model, spec, found, file, log)
        return load_tensors(model, spec, published_state_dict(found, file),
                            f"{file} ({found.describe()})", log)
    in_order = Path(path).suffix.lower() in TORCH_SUFFIXES  # torch.load keeps the saved order; safetensors sorts
    return load_tensors(model, spec, read_weights(path), str(path), log, ordered=in_order)


def published_state_dict(weights: PublishedWeights, path: Path) -> dict[str, Any]:
    """The tensors of a verified torchvision weights file, with the key names the torchvision model uses.

    Read with ``torch.load(weights_only=True)`` (torch.hub's own loader would unpickle anything); DenseNet's old
    key names are renamed by torchvision's own loader, given the tensors already read."""
    tensors = read_weights(path)
    tv_name = weights.extra.get("tv_name", "")
    if tv_name.startswith("densenet"):
        from torchvision.models import densenet, get_model

        reference = get_model(tv_name, weights=None)

        class _Read:
            def get_state_dict(self, **_: Any) -> dict[str, Any]:
                return dict(tensors)

        densenet._load_state_dict(reference, _Read(), progress=False)  # type: ignore[arg-type]
        tensors = reference.state_dict()
    return tensors


def load_timm_pretrained(model: Any, spec: Any, weights: Any, path: Path,
                         log: Callable[[str], None] | None) -> PretrainedReport:
    """Load a timm weights file into ``model``: timm builds the same architecture from the tensors (its own
    filter, classifier reset and first-convolution adaptation), and its state dict is copied over."""
    tensors = read_weights(path)
    first = next(iter(model.parameters()))
    num_classes = int(model.num_classes)
    if not set(tensors) & set(model.state_dict()):  # another library's names (an installed weights package)
        return load_tensors(model, spec, tensors, f"{path} ({weights.describe()})", log,
                            ordered=path.suffix.lower() in TORCH_SUFFIXES)
    reference, in_chans = timm_reference_state(model, weights, tensors)
    model.load_state_dict(reference, strict=True)
    model.to(first.device)
    report = PretrainedReport(f"{path} ({weights.describe()})")
    own = model.state_dict()
    head = f"{spec.classifier}."
    report.loaded = [key for key in own if key in tensors and tensors[key].shape == own[key].shape]
    report.reinitialised = [key for key in own if key.startswith(head) and key not in report.loaded]
    if report.reinitialised:
        report.head_change = f"the weights have {weights.extra.get('num_classes')} classes, the model {num_classes}"
    report.adapted = [f"{key} 3 → {in_chans} input channels" for key in own
                      if key in tensors and tensors[key].ndim == 4 and tensors[key].shape[1] == 3
                      and own[key].shape[1] == in_chans != 3][:1]
    for line in report.lines():
        (log or (lambda _: None))(line)
    return report


def load_tensors(model: torch.nn.Module, spec: Any, tensors: dict[str, torch.Tensor], source: str,
                 log: Callable[[str], None] | None = None, *, ordered: bool = True) -> PretrainedReport:
    """:func:`load_pretrained` for tensors already read; ``source`` names them in messages. ``ordered``: the
    tensors are in the order they were saved (a ``.pth``; safetensors files sort their names), so they may be
    paired with the model's by position when their names differ."""

    report = PretrainedReport(source)
    own = model.state_dict()
    rules = _FitRules(f"{first_conv_name(model)}.weight", f"{spec.classifier}.")
    pairs = _pairs_by_name(tensors, own, report)
    if not any(not key.startswith(rules.head) for _, key in pairs):  # the names say nothing: try the order
        pairs = _pairs_by_order(tensors, own, rules, source, spec.name, ordered)
        report.matched_by, report.mapping = "order", dict(pairs)
        report.unexpected, report.stripped_prefixes = [], []
    accepted: dict[str, Any] = {}
    mismatched: list[str] = []
    for original, key in pairs:
        tensor, want = tensors[original], own[key].shape
        verdict = rules.verdict(key, tuple(tensor.shape), tuple(want))
        if verdict == "load":
            accepted[key] = tensor
        elif verdict == "adapt":
            accepted[key] = adapt_input_conv(tensor.float(), want[1]).to(tensor.dtype)
            report.adapted.append(f"{key} {tensor.shape[1]} → {want[1]} input channels")
        elif verdict == "reinitialise":
            report.reinitialised.append(key)
            if key.endswith("weight"):
                report.head_change = f"the weights have {tensor.shape[0]} classes, the model {want[0]}"
        else:
            mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(want)}")
    if mismatched:
        shown = ", ".join(mismatched[:3]) + (f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else "")
        raise CheckpointError(f"--pretrained {source} does not fit {spec.name}: shape mismatch {shown}",
                              hint="the weights are probably for another architecture")
    report.loaded = [key for key in own if key in accepted]  # the model's order, not the file's
    report.reinitialised = [key for key in own if key in report.reinitialised]
    # BatchNorm step counters are bookkeeping, not weights; old checkpoints lack them.
    report.missing = [key for key in own if key not in accepted and key not in report.reinitialised
                      and not _is_counter(key)]
    own.update(accepted)  # in place: keeps the state dict's _metadata (versions some modules check on load)
    model.load_state_dict(own, strict=True)
    for line in report.lines():
        (log or (lambda _: None))(line)
    return report


def initialise_new_head(model: torch.nn.Module, keys: list[str], mode: str,
                        log: Callable[[str], None] | None = None) -> None:
    """``--head-init``: ``zero`` sets the replaced classifier tensors ``keys`` to zero, so every class starts
    equally likely (the first loss is exactly ln(classes)) instead of the large random logits a fresh layer
    makes from pretrained features; the head's own gradient is not zero (features times the error), and the
    backbone waits for the head to learn before it gets any. ``random`` keeps the architecture's initialisation."""
    if mode != "zero" or not keys:
        return
    import torch

    parameters = dict(model.named_parameters())
    layers = [key.rpartition(".")[0] for key in keys if key in parameters]  # not a head's BatchNorm statistics
    if not layers:
        return
    # only the output layer: a zero hidden layer too would leave every gradient of the head at zero
    zeroed = [key for key in keys if key in parameters and key.rpartition(".")[0] == layers[-1]]
    with torch.no_grad():
        for key in zeroed:
            parameters[key].zero_()
    (log or (lambda _: None))(f"pretrained: new classifier starts at zero ({', '.join(zeroed)})")


# The last part of a tensor's name that says what it is; paired by order, these must agree (a BatchNorm's four
# vectors have the same shape, so the shape alone cannot tell a weight from a running mean).
ROLE_NAMES = ("weight", "bias", "running_mean", "running_var")


def _is_counter(key: str) -> bool:
    return key.endswith(COUNTER_SUFFIX)


@dataclass(frozen=True)
class _FitRules:
    """Which shape differences a pretrained tensor may have from the model's: the first convolution's input
    channels (adapted) and anything in the classifier (re-initialised)."""

    first_conv: str
    head: str

    def verdict(self, key: str, shape: tuple[int, ...], want: tuple[int, ...]) -> str | None:
        """``load``, ``adapt``, ``reinitialise``, or None when the tensor cannot go into ``key``."""
        if shape == want:
            return "load"
        if key == self.first_conv and len(shape) == 4 == len(want) and shape[0] == want[0] \
                and shape[2:] == want[2:]:
            return "adapt"
        if key.startswith(self.head):
            return "reinitialise"
        return None


def _pairs_by_name(tensors: dict[str, Any], own: dict[str, Any], report: PretrainedReport) -> list[tuple[str, str]]:
    """(file key, model key) for the file's tensors whose names, wrapper prefixes removed, are the model's;
    the others go to ``report.unexpected``."""
    pairs = []
    for original in tensors:
        key = _strip_prefixes(original, set(own), report.stripped_prefixes)
        if key in own:
            pairs.append((original, key))
        else:
            report.unexpected.append(original)
    return pairs


def _pairs_by_order(tensors: dict[str, Any], own: dict[str, Any], rules: _FitRules, source: str, arch: str,
                    ordered: bool) -> list[tuple[str, str]]:
    """(file key, model key) pairing the file's tensors with the model's by position, when every pair fits:
    the same shape (or the first convolution / classifier differences the rules allow) and the same role
    (weight, bias, running mean or variance). BatchNorm step counters, which one side may lack, are left out
    of the count and follow their layer. Anything less than a one-to-one fit is one error naming the first
    pair that does not fit."""
    refused = f"--pretrained {source}: none of its {len(tensors)} tensors match {arch} by name"
    if not ordered:
        raise CheckpointError(f"{refused} (its keys look like {', '.join(list(tensors)[:3])})",
                              hint="the weights are for another architecture, or are a safetensors file, which "
                                   "does not keep the order that could pair them (a .pth does)")
    theirs = [key for key in tensors if not _is_counter(key)]
    ours = [key for key in own if not _is_counter(key)]

    def described(key: str, shape: Any) -> str:
        return f"{key} {tuple(shape)}"

    for position, (file_key, key) in enumerate(zip(theirs, ours), 1):
        shape, want = tuple(tensors[file_key].shape), tuple(own[key].shape)
        role, own_role = file_key.rpartition(".")[2], key.rpartition(".")[2]
        same_role = role == own_role or role not in ROLE_NAMES or own_role not in ROLE_NAMES
        if not same_role or rules.verdict(key, shape, want) is None:
            raise CheckpointError(
                f"{refused}, nor by order: tensor {position} of the file, {described(file_key, shape)}, does not "
                f"fit the model's {described(key, want)}", hint="the weights are for another architecture")
    if len(theirs) != len(ours):
        longer = "file" if len(theirs) > len(ours) else "model"
        extra = theirs[len(ours)] if longer == "file" else ours[len(theirs)]
        shape = (tensors if longer == "file" else own)[extra].shape
        raise CheckpointError(
            f"{refused}, nor by order: the file has {len(theirs)} tensors and the model {len(ours)} (BatchNorm "
            f"counters aside); the {longer}'s tensor {min(len(theirs), len(ours)) + 1}, {described(extra, shape)}, "
            "has no partner", hint="the weights are for another architecture")
    pairs = list(zip(theirs, ours))
    file_layer = {key.rpartition(".")[0]: file_key.rpartition(".")[0] for file_key, key in pairs}
    for key in own:  # a counter follows its layer, when the file has one for that layer
        layer = file_layer.get(key.rpartition(".")[0])
        if _is_counter(key) and layer is not None and f"{layer}.{COUNTER_SUFFIX}" in tensors:
            pairs.append((f"{layer}.{COUNTER_SUFFIX}", key))
    order = {key: index for index, key in enumerate(own)}
    return sorted(pairs, key=lambda pair: order[pair[1]])


def parameter_groups(model: torch.nn.Module, classifier: str, config: Any) -> Any:
    """``--backbone-lr-scale``: the optimizer's parameter groups, everything outside the classifier at
    ``scale`` times the learning rate (the schedule keeps the ratio); all parameters when the scale is 1."""
    scale = getattr(config, "backbone_lr_scale", None)
    if scale is None or scale == 1:
        return model.parameters()

    def inside(name: str) -> bool:
        return name == classifier or name.startswith(f"{classifier}.")

    head = [p for name, p in model.named_parameters() if inside(name)]
    body = [p for name, p in model.named_parameters() if not inside(name)]
    if not head:
        raise UsageError(f"--backbone-lr-scale: the model has no parameters under its classifier {classifier!r}")
    return [{"params": body, "lr": config.resolved_lr() * scale}, {"params": head}]
