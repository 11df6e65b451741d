"""Penultimate features and a linear head trained on them.

The features of an image are what the model's classifier (the registry's ``classifier``: ``fc``, ``classifier``,
``classifier.3``) receives: read with a forward pre-hook on that module, so every architecture cnnctl builds
(its own, torchvision's, timm's) gives them without knowing its layers, and the model runs exactly as in eval.
A classifier that sees a feature map (SqueezeNet's 1x1 convolution) gets it averaged over space.

The linear probe trains only a new linear head on features computed once: a few hundred full-batch steps on
standardised features, the standardisation then folded into the head's weights, so the head takes the model's
own features and the model with it is an ordinary checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch

PROBE_STEPS = 300  # full-batch optimizer steps of the head (seconds on a CPU for thousands of images)
PROBE_LR = 0.01  # Adam, on standardised features, decayed to 0 along a cosine
PROBE_WEIGHT_DECAY = 1e-2  # L2 on the head: features outnumber images on small data (best of 3e-3..1e-1, digits)


def classifier_module(model: torch.nn.Module, classifier: str) -> torch.nn.Module:
    """The module the registry names as ``classifier`` (its parameters' prefix)."""
    try:
        return model.get_submodule(classifier)
    except AttributeError as error:
        raise UsageError(f"{type(model).__name__} has no classifier module {classifier!r}") from error


def linear_head(model: torch.nn.Module, classifier: str, arch: str) -> torch.nn.Linear:
    """The classifier as a linear layer, or one line saying why a linear probe cannot train it."""
    from torch import nn

    module = classifier_module(model, classifier)
    if not isinstance(module, nn.Linear) or module.bias is None:
        what = type(module).__name__ if not isinstance(module, nn.Linear) else "Linear layer without a bias"
        raise UsageError(f"--linear-probe trains a linear classifier, but {arch}'s classifier {classifier} is a "
                         f"{what}", hint="fine-tune it instead (leave --linear-probe out), or pick "
                                                          "an architecture whose classifier is a Linear layer")
    return module


@contextlib.contextmanager
def penultimate_capture(model: torch.nn.Module, classifier: str) -> Iterator[list[torch.Tensor]]:
    """Within this block, every forward of ``model`` appends the classifier's input (N×D) to the list yielded."""
    captured: list[torch.Tensor] = []

    def keep(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        features = inputs[0]
        if features.ndim == 4:  # a convolutional classifier sees a feature map: its global average
            features = features.mean(dim=(2, 3))
        captured.append(features.flatten(1).float())

    handle = classifier_module(model, classifier).register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def penultimate(model: torch.nn.Module, classifier: str, inputs: torch.Tensor) -> torch.Tensor:
    """The features (N×D, float32) of one normalised batch, in eval mode, without gradients."""
    import torch

    model.eval()
    with penultimate_capture(model, classifier) as captured, torch.inference_mode():
        model(inputs)
    return captured[-1]


def l2_normalised(features: torch.Tensor) -> torch.Tensor:
    """Each row divided by its Euclidean norm (a zero row stays zero)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def batch_features(model: torch.nn.Module, classifier: str,
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every batch, on the CPU, in the batches' order."""
    import torch

    features, labels = [], []
    for inputs, targets in batches:
        features.append(penultimate(model, classifier, inputs).cpu())
        labels.append(targets.cpu())
    return torch.cat(features), torch.cat(labels)


@dataclass
class LinearHead:
    """A head trained on cached features: ``weight`` (classes×D) and ``bias`` take the raw features."""

    weight: torch.Tensor
    bias: torch.Tensor
    loss: float  # mean training cross-entropy (without the L2 term) after the last step
    accuracy: float  # on the training features
    steps: int

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias


def fit_linear_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = PROBE_STEPS,
                    lr: float = PROBE_LR, weight_decay: float = PROBE_WEIGHT_DECAY, seed: int = 0,
                    class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> LinearHead:
    """Softmax regression on ``features`` (N×D) by full-batch Adam with a cosine decay.

    Features are standardised first (each dimension to mean 0, std 1: one step size suits every backbone), and
    the standardisation is folded into the returned weights: ``W' = W / s``, ``b' = b - W' · m``."""
    import math

    import torch
    import torch.nn.functional as F

    features = features.float()
    labels = labels.to(features.device)
    mean = features.mean(dim=0)
    scale = features.std(dim=0, unbiased=False).clamp_min(1e-6)
    standard = (features - mean) / scale
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weight = (torch.randn(num_classes, features.shape[1], generator=generator) * 0.01).to(features.device)
    weight.requires_grad_(True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    if class_weights is not None:
        class_weights = class_weights.to(features.device)
    loss = torch.zeros(())
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(standard @ weight.T + bias, labels, weight=class_weights,
                               label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (loss + 0.5 * weight_decay * weight.pow(2).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        folded = weight / scale
        head = LinearHead(folded.detach().clone(), (bias - folded @ mean).detach().clone(), 0.0, 0.0, steps)
        logits = head.logits(features)
        head.loss = float(F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing))
        head.accuracy = float((logits.argmax(1) == labels).float().mean())
    return head


def install_head(module: torch.nn.Linear, head: LinearHead) -> None:
    """Copy a trained head into the model's classifier (same device and dtype as the layer)."""
    import torch

    with torch.no_grad():
        module.weight.copy_(head.weight.to(module.weight))
        module.bias.copy_(head.bias.to(module.bias))
