"""Architectures of the LeNet family: parameter counts from the issue, forward/backward, registry metadata."""

from __future__ import annotations

import pytest
import torch

from cnnctl import registry
from cnnctl.models import build_model

LENET_FAMILY = ["lenet5", "lenet", "simplecnn"]


def test_lenet5_has_the_classic_parameter_count() -> None:
    model = build_model("lenet5", num_classes=10, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) == 61_706


@pytest.mark.parametrize("name", LENET_FAMILY)
def test_forward_backward_and_registered_count(name: str) -> None:
    spec = registry.get_model_spec(name)
    model = build_model(name, num_classes=10, in_channels=spec.in_channels)
    assert sum(p.numel() for p in model.parameters()) == spec.params
    inputs = torch.randn(4, spec.in_channels, *spec.input_size)
    logits = model(inputs)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_classifier_prefix_names_the_last_layer() -> None:
    for name in LENET_FAMILY:
        spec = registry.get_model_spec(name)
        model = build_model(name, num_classes=7, in_channels=1)
        assert model.state_dict()[f"{spec.classifier}.weight"].shape[0] == 7


def test_unknown_architecture_suggests_a_close_match() -> None:
    with pytest.raises(registry.UsageError, match="did you mean lenet5"):
        registry.get_model_spec("lenet55")
    with pytest.raises(registry.UsageError, match="choose one of"):
        registry.get_model_spec("transformer-xxl")


def test_smallvgg_stages_keep_the_two_stage_default_and_add_depth() -> None:
    default = build_model("smallvgg", num_classes=10, in_channels=1)
    assert sum(p.numel() for p in default.parameters()) == registry.get_model_spec("smallvgg").params
    assert "conv2_2.weight" in default.state_dict() and "conv3_1.weight" not in default.state_dict()
    deeper = build_model("smallvgg", num_classes=10, in_channels=1, width=8, stages=3)
    weights = deeper.state_dict()
    assert weights["conv3_2.weight"].shape == (32, 32, 3, 3)  # width doubles each stage: 8, 16, 32
    assert weights["fc1.weight"].shape == (128, 32 * 3 * 3)  # 28 pixels halved three times, floored
    for side in (28, 32, 64):
        assert deeper(torch.randn(2, 1, side, side)).shape == (2, 10)
    with pytest.raises(registry.UsageError, match="1 to 4 stages"):
        build_model("smallvgg", num_classes=10, in_channels=1, stages=7)
