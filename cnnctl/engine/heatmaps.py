"""Where a model looks: Grad-CAM, Grad-CAM++ and integrated gradients heat maps, computed with Captum.

Grad-CAM needs a convolutional feature map. :func:`default_target_layer` finds the last one for any architecture
(the last module to output a 4-D map larger than 1×1, leaving out pooling layers and the classifier: ``layer4``
for the ResNets, ``features`` for VGG/MobileNet/DenseNet, ``relu2`` for LeNet-5); ``layer=`` overrides it.
Captum is an optional extra (``pip install 'cnnctl[explain]'``), imported only here.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.loader import Normalizer, fit_to_input
from cnnctl.engine.multilabel_metrics import decisions
from cnnctl.engine.predict import decode_image, find_images, model_with_meta
from cnnctl.errors import UsageError
from cnnctl.plots import _figure, _save
from cnnctl.registry import get_model_spec

if TYPE_CHECKING:
    import torch

METHODS = ("gradcam", "gradcam++", "integrated-gradients")
CAPTUM_MISSING = "cnnctl explain needs Captum: pip install 'cnnctl[explain]'"
IG_STEPS = 32  # integration steps: enough for maps that do not change visibly with more


@dataclass
class Explanation:
    """One image's heat map (H×W in [0, 1], at the image's size) for ``target``, with the top predictions."""

    source: str
    method: str
    target: int
    target_name: str
    heatmap: Any  # torch.Tensor H×W
    topk: list[tuple[int, str, float]] = field(default_factory=list)
    layer: str | None = None
    output: Path | None = None


def require_captum() -> None:
    try:
        import captum  # noqa: F401
    except ImportError as error:
        raise UsageError(CAPTUM_MISSING) from error


def _contains(prefix: str, name: str) -> bool:
    """Whether module ``prefix`` is ``name`` or one of its ancestors (``""`` is the model itself)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _is_pooling(module: Any) -> bool:
    from torch import nn

    return isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                               nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd))


def feature_maps(model: torch.nn.Module, input_shape: Sequence[int], classifier: str | None = None, *,
                 names: Sequence[str] | None = None) -> dict[str, int]:
    """``{module name: map area (H·W)}`` of the modules that output a 4-D feature map, in the order they last
    finish a forward pass of a zero image. Without ``names``: every module but the model itself, pooling layers
    (they only shrink the map) and the head: the classifier, the container it sits in (other than the model
    itself: SqueezeNet's classifier is a 1×1 conv among dropout, ReLU and pooling) and what runs after it."""
    import torch

    head = classifier.rpartition(".")[0] if classifier else ""
    finished: dict[str, int] = {}
    state = {"head_done": False}
    hooks = []
    for name, module in model.named_modules():
        if names is not None:
            if name not in names:
                continue
        elif not name or _is_pooling(module) or (head and _contains(head, name)):
            continue
        is_classifier = name == classifier

        def record(_module: Any, _inputs: Any, output: Any, name: str = name, is_classifier: bool = is_classifier
                   ) -> None:
            if is_classifier:
                state["head_done"] = True
            elif not state["head_done"] and isinstance(output, torch.Tensor) and output.dim() == 4:
                finished.pop(name, None)
                finished[name] = int(output.shape[2] * output.shape[3])

        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return finished


def default_target_layer(model: torch.nn.Module, input_shape: Sequence[int], classifier: str | None = None) -> str:
    """The last convolutional block: the last feature map before the global pooling and the classifier, at more
    than 1×1 if the input allows (a single cell cannot say where anything is)."""
    maps = feature_maps(model, input_shape, classifier)
    if not maps:
        raise UsageError(f"{type(model).__name__} has no convolutional feature map for Grad-CAM",
                         hint="use --method integrated-gradients")
    spatial = [name for name, area in maps.items() if area > 1]
    return spatial[-1] if spatial else list(maps)[-1]


def check_layer(model: torch.nn.Module, name: str, input_shape: Sequence[int], classifier: str | None = None
                ) -> str:
    """``name`` if it is a module of ``model`` with a 4-D output, else one line saying which names would do."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        candidates = list(feature_maps(model, input_shape, classifier))
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"choose one of: {', '.join(candidates[-8:])}"
        raise UsageError(f"--layer {name!r}: the model has no such module", hint=hint)
    if name not in feature_maps(model, input_shape, names=[name]):
        candidates = list(feature_maps(model, input_shape, classifier))
        raise UsageError(f"--layer {name!r} does not output a convolutional feature map (N×C×H×W)",
                         hint=f"choose one of: {', '.join(candidates[-8:])}")
    return name


def _without_inplace(model: torch.nn.Module) -> None:
    """Captum's hooks need each layer's output intact: an in-place activation after it would overwrite it."""
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each N×H×W map scaled to [0, 1] by its own maximum (an all-zero map stays zero)."""
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)


def attribution_maps(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, method: str, *,
                     layer: str | None = None, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """N×H×W heat maps (at the input's size, in [0, 1]) of ``model``'s evidence for ``targets`` in ``inputs``."""
    require_captum()
    import torch
    from captum.attr import (
        IntegratedGradients,
        LayerActivation,
        LayerAttribution,
        LayerGradCam,
        LayerGradientXActivation,
    )

    size = tuple(inputs.shape[-2:])
    target_list = targets.tolist()
    if method == "integrated-gradients":
        baselines = torch.zeros_like(inputs) if baseline is None else baseline.expand_as(inputs)
        attributions = IntegratedGradients(model).attribute(inputs, baselines=baselines, target=target_list,
                                                            n_steps=IG_STEPS, internal_batch_size=IG_STEPS)
        maps = attributions.detach().clamp(min=0).sum(dim=1)  # evidence for the class, over the channels
        return _normalise(maps)
    if layer is None:
        raise ValueError(f"{method} needs a layer")
    module = model.get_submodule(layer)
    if method == "gradcam":
        cam = LayerGradCam(model, module).attribute(inputs, target=target_list, relu_attributions=True)
    elif method == "gradcam++":
        cam = _gradcam_plus_plus(model, module, inputs, target_list, LayerActivation, LayerGradientXActivation)
    else:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    upsampled = LayerAttribution.interpolate(cam.detach(), size, interpolate_mode="bilinear")
    return _normalise(upsampled[:, 0].clamp(min=0))


def _gradcam_plus_plus(model: torch.nn.Module, module: torch.nn.Module, inputs: torch.Tensor,
                       targets: list[int], activation_cls: Any, gradient_cls: Any) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018): Captum gives the layer's activations A and the gradients g of the
    class score; each channel is weighted by Σ relu(g)·α with α = g² / (2g² + ΣA·g³), the closed form for an
    exponential score, as the reference implementation does."""
    import torch

    activations = activation_cls(model, module).attribute(inputs).detach()
    gradients = gradient_cls(model, module, multiply_by_inputs=False).attribute(inputs, target=targets).detach()
    squared = gradients.pow(2)
    denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * gradients.pow(3)
    alpha = torch.where(gradients != 0, squared / torch.where(denominator != 0, denominator, torch.ones_like(
        denominator)), torch.zeros_like(gradients))
    weights = (alpha * gradients.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1, keepdim=True).clamp(min=0)


def explain_tensor(model: torch.nn.Module, images: torch.Tensor, *, method: str = "gradcam",
                   layer: str | None = None, target: int | str | None = None, topk: int = 5
                   ) -> tuple[list[tuple[torch.Tensor, int, list[tuple[int, str, float]], int]], str | None]:
    """Heat maps for uint8 N×C×H×W ``images`` at the checkpoint's image size, for a model from ``cnnctl.load``.

    Returns ``([(heatmap H×W, target, top-k, image row), ...], layer)``: the target is ``target`` (a class name or
    index) or else each image's predicted class; for a multi-label checkpoint every label at or above its
    threshold (the most probable one when none is), one map each, with the labels' sigmoid probabilities as the
    top-k. The layer is the one Grad-CAM used (None for integrated gradients).
    """
    import torch

    require_captum()
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    meta = model.cnnctl_meta  # type: ignore[attr-defined]
    preprocessing = meta.preprocessing
    classes = list(meta.classes)
    device = next(model.parameters()).device
    model.eval()
    _without_inplace(model)
    normalize = Normalizer(preprocessing.mean, preprocessing.std, device)
    inputs = normalize(fit_to_input(images, preprocessing).to(device))
    multilabel = bool(getattr(meta, "multilabel", False))
    with torch.no_grad():
        logits = model(inputs).float()
    probabilities = (logits.sigmoid() if multilabel else logits.softmax(dim=1)).cpu()
    if target is not None:
        pairs = [(row, _class_index(target, classes)) for row in range(probabilities.shape[0])]
    elif multilabel:  # one map per label given
        given = decisions(probabilities, meta.resolved_thresholds, meta.label_count_range)
        pairs = [(row, c) for row in range(probabilities.shape[0])
                 for c in (given[row].nonzero().flatten().tolist() or [int(probabilities[row].argmax())])]
    else:
        pairs = [(row, int(c)) for row, c in enumerate(probabilities.argmax(dim=1).tolist())]
    rows = torch.tensor([row for row, _ in pairs], dtype=torch.int64)
    targets = torch.tensor([c for _, c in pairs], dtype=torch.int64)
    if method == "integrated-gradients":
        if layer is not None:
            raise UsageError("--layer applies to gradcam and gradcam++, not to integrated gradients")
        chosen = None
    else:
        spec_classifier = _classifier_of(meta.arch, get_model_spec)
        shape = preprocessing.input_shape
        chosen = check_layer(model, layer, shape, spec_classifier) if layer else \
            default_target_layer(model, shape, spec_classifier)
    black = normalize(torch.zeros(1, *inputs.shape[1:], dtype=torch.uint8, device=device))
    maps = attribution_maps(model, inputs[rows.to(device)], targets.to(device), method, layer=chosen,
                            baseline=black).cpu()
    pad = preprocessing.pad
    if pad:
        maps = maps[:, pad:maps.shape[1] - pad, pad:maps.shape[2] - pad]
    k = max(1, min(topk, len(classes)))
    top_p, top_i = probabilities.topk(k, dim=1)
    results = []
    for position, row in enumerate(rows.tolist()):
        ranked = [(int(c), classes[int(c)], float(p)) for p, c in zip(top_p[row], top_i[row])]
        results.append((maps[position], int(targets[position]), ranked, row))
    return results, chosen


def _classifier_of(arch: str, get_spec: Any) -> str | None:
    try:
        return get_spec(arch).classifier
    except UsageError:
        return None


def _class_index(target: int | str, classes: list[str]) -> int:
    if isinstance(target, int) or (isinstance(target, str) and target not in classes and target.isdigit()):
        index = int(target)
        if not 0 <= index < len(classes):
            raise UsageError(f"--target {target}: there are {len(classes)} classes (0-{len(classes) - 1})")
        return index
    if target not in classes:
        close = difflib.get_close_matches(str(target), classes, n=1, cutoff=0.6)
        raise UsageError(f"--target {target!r} is not one of the checkpoint's classes",
                         hint=f"did you mean {close[0]}?" if close else f"choose one of: {', '.join(classes[:10])}")
    return classes.index(target)


def output_names(sources: Sequence[str], method: str) -> list[str]:
    """``<stem>.<method>.png`` per image; images that share a stem get their position as a prefix."""
    tag = method.replace("++", "-pp")
    stems = [Path(source).stem for source in sources]
    repeated = {stem for stem in stems if stems.count(stem) > 1}
    return [f"{index:04d}-{stem}.{tag}.png" if stem in repeated else f"{stem}.{tag}.png"
            for index, stem in enumerate(stems)]


def plot_explanation(image: torch.Tensor, heatmap: torch.Tensor, topk: Sequence[tuple[int, str, float]],
                     target_name: str, path: Path, *, title: str) -> Path:
    """The image, the heat map over it, and the top-k probabilities with the explained class highlighted."""
    figure = _figure(10.5, 3.6)
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.25]})
    picture = image.detach().cpu()
    shown = picture[0].numpy() if picture.shape[0] == 1 else picture[:3].permute(1, 2, 0).numpy()
    grey = picture.shape[0] == 1
    for axis in axes[:2]:
        axis.imshow(shown, cmap="gray" if grey else None, vmin=0, vmax=255)
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0].set_title("image", fontsize=10)
    overlay = axes[1].imshow(heatmap.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1,
                             extent=(-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5))
    figure.colorbar(overlay, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title(f"evidence for {target_name}", fontsize=10)
    names = [name for _, name, _ in topk][::-1]
    values = [probability for _, _, probability in topk][::-1]
    colours = ["#e45756" if name == target_name else "#4c78a8" for name in names]
    axes[2].barh(range(len(names)), values, color=colours)
    axes[2].set_yticks(range(len(names)), [name if len(name) <= 14 else name[:13] + "…" for name in names])
    axes[2].set_xlim(0, 1)
    for position, value in enumerate(values):
        axes[2].text(min(value + 0.02, 0.8), position, f"{value:.1%}", va="center", fontsize=8)
    axes[2].set_title(f"top-{len(names)} predictions", fontsize=10)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def explain(model_or_path: Any, images: Any, *, method: str = "gradcam", layer: str | None = None,
            target: int | str | None = None, output: str | Path | None = None, topk: int = 5,
            device: str = "cpu", batch_size: int = 32) -> list[Explanation]:
    """``cnnctl explain``: a heat map per image (files, folders, or a uint8 N×C×H×W tensor at the checkpoint's
    image size); with ``output``, also ``<stem>.<method>.png`` per image in that folder."""
    import torch

    require_captum()
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    model, meta = model_with_meta(model_or_path, device, "cnnctl.explain")
    if isinstance(images, torch.Tensor):
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        sources = [f"image {i}" for i in range(batch.shape[0])]
        decoded = list(batch)
    else:
        files, _ = find_images([images] if isinstance(images, (str, Path)) else list(images))
        if not files:
            raise UsageError("no images to explain", hint="pass image files or folders of images")
        sources = [str(path) for path in files]
        decoded = [decode_image(path, meta.preprocessing) for path in files]  # DataError names a bad file
    names = output_names(sources, method) if output is not None else []
    per_label = bool(getattr(meta, "multilabel", False)) and target is None  # several maps per image
    explanations: list[Explanation] = []
    for start in range(0, len(decoded), batch_size):
        chunk = torch.stack(decoded[start:start + batch_size])
        results, chosen = explain_tensor(model, chunk, method=method, layer=layer, target=target, topk=topk)
        for heatmap, label, ranked, offset in results:
            position = start + offset
            name = meta.classes[label]
            explanation = Explanation(sources[position], method, label, name, heatmap, ranked, chosen)
            if output is not None:
                where = f" ({chosen})" if chosen else ""
                title = f"{Path(sources[position]).name}: {method}{where}"
                file_name = label_file_name(names[position], name) if per_label else names[position]
                explanation.output = plot_explanation(chunk[offset], heatmap, ranked, name, Path(output) / file_name,
                                                      title=title)
            explanations.append(explanation)
    return explanations


def label_file_name(name: str, label: str) -> str:
    """``x.gradcam.png`` for label ``cat`` → ``x.cat.gradcam.png`` (a multi-label image's map per label); the label
    reduced to letters, digits, ``-`` and ``_``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)[:60] or "label"
    stem, method, suffix = name.rsplit(".", 2)
    return f"{stem}.{safe}.{method}.{suffix}"
