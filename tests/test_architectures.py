"""Every registered architecture: builds with its registered parameter count, runs forward and backward, and
survives a safetensors round trip; torchvision ones match the plain torchvision model key for key and load into
it. Plus the numbers from the issue, naming, the 1-channel stem and --dropout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from cnnctl import checkpoint, registry
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.data.base import Preprocessing
from cnnctl.errors import UsageError
from cnnctl.models import build_model
from cnnctl.summary import summarize, summarize_target

ALL_ARCHS = sorted(registry.models())
# Cheap enough on two shared CPU cores to run forward+backward at their default 224x224; the heavier zoo models
# (ResNet-50, VGG, ConvNeXt, ... up to 15 GMACs) run at their minimum input size, at least 32x32.
LIGHT_AT_224 = {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x0_5",
                "shufflenet_v2_x1_0", "regnet_x_400mf", "regnet_y_400mf", "squeezenet1_1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tv_name(spec: registry.ModelSpec) -> str:
    return spec.name.removeprefix("tv:")


def input_size_for_test(spec: registry.ModelSpec) -> tuple[int, int]:
    if spec.source == "cnnctl" or spec.name in LIGHT_AT_224:
        return spec.input_size
    side = max(spec.min_input, 32)
    return (side, side)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_for(spec: registry.ModelSpec, channels: int, size: tuple[int, int], classes: int = 10) -> CheckpointMeta:
    return CheckpointMeta(arch=spec.name, arch_args={}, classes=[str(i) for i in range(classes)],
                          preprocessing=Preprocessing(channels, size, 0, (0.5,) * channels, (0.5,) * channels))


@pytest.mark.parametrize("name", ALL_ARCHS)
def test_architecture_trains_and_round_trips(name: str, tmp_path: Path) -> None:
    spec = registry.get_model_spec(name)
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=spec.in_channels)
    assert parameter_count(model) == spec.params  # what `cnnctl list` shows without importing torch
    assert f"{spec.classifier}.weight" in model.state_dict()
    assert model.state_dict()[f"{spec.classifier}.weight"].shape[0] == 10

    size = input_size_for_test(spec)
    inputs = torch.randn(2, spec.in_channels, *size)
    model.train()
    logits = model(inputs)
    assert logits.shape == (2, 10)
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    summary = summarize(model, (spec.in_channels, *size), arch=name, num_classes=10)
    assert summary.total_parameters == spec.params and summary.macs > 0
    head = next(row for row in summary.layers if row.name == spec.classifier)
    assert head.output_shape[:2] == [1, 10]

    path = checkpoint.save(tmp_path / "model.safetensors", model, meta_for(spec, spec.in_channels, size))
    model.eval()
    with torch.no_grad():
        expected = model(inputs)
    if spec.source == "torchvision":
        # The plain torchvision model, no cnnctl involved: same keys and shapes, loads the file, same outputs.
        plain = torchvision.models.get_model(tv_name(spec), weights=None, num_classes=10)
        assert {k: v.shape for k, v in plain.state_dict().items()} == \
               {k: v.shape for k, v in model.state_dict().items()}
        plain.load_state_dict(load_file(str(path)))
        reloaded = plain.eval()
    else:
        reloaded, _ = checkpoint.load(path)
    with torch.no_grad():
        assert torch.equal(reloaded(inputs), expected)


def test_issue_numbers() -> None:
    small = summarize_target("resnet18", "3x32x32", 10)
    assert small.total_parameters == 11_173_962
    imagenet = summarize_target("tv:resnet18", "3x224x224", 1000)
    assert imagenet.total_parameters == 11_689_512  # torchvision's published count for resnet18
    assert round(imagenet.macs / 1e9, 3) == 1.814
    mobile = summarize_target("mobilenet_v3_small", None, 1000)
    assert mobile.input_shape == (3, 224, 224) and mobile.total_parameters == 2_542_856


def test_small_resnets_differ_from_imagenet_ones_only_in_the_stem() -> None:
    for depth in ("18", "34", "50"):
        small = build_model(f"resnet{depth}", num_classes=10, in_channels=3)
        imagenet = build_model(f"tv:resnet{depth}", num_classes=10, in_channels=3)
        assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
        assert isinstance(small.maxpool, torch.nn.Identity)
        # 7x7x3x64 stem weights become 3x3x3x64: the only difference
        assert parameter_count(imagenet) - parameter_count(small) == 64 * 3 * (49 - 9)
        assert list(small.state_dict()) == list(imagenet.state_dict())
    model = build_model("resnet18", num_classes=10, in_channels=3).eval()
    shapes = {}
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, stage).register_forward_hook(lambda m, i, o, s=stage: shapes.__setitem__(s, o.shape[1:]))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert shapes == {"layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8), "layer4": (512, 4, 4)}


def test_names_resolve_explicitly() -> None:
    assert registry.get_model_spec("resnet18").source == "cnnctl"
    assert registry.get_model_spec("tv:resnet18").source == "torchvision"
    assert registry.get_model_spec("tv:mobilenet_v3_small").name == "mobilenet_v3_small"
    assert registry.get_model_spec("MobileNet-V3-Small").name == "mobilenet_v3_small"
    every_name = [n for spec in registry.models().values() for n in (spec.name, *spec.aliases)]
    assert len(every_name) == len(set(every_name))
    zoo = [spec for spec in registry.models().values() if spec.source == "torchvision"]
    available = set(torchvision.models.list_models(module=torchvision.models))
    assert all(tv_name(spec) in available for spec in zoo)
    assert all(registry.get_model_spec(f"tv:{tv_name(spec)}") is spec for spec in zoo)


@pytest.mark.parametrize("name", ["tv:resnet18", "mobilenet_v3_small", "vgg11", "convnext_tiny", "densenet121",
                                  "squeezenet1_1", "shufflenet_v2_x0_5", "efficientnet_b0", "alexnet"])
def test_one_channel_input_gets_a_one_channel_stem(name: str, tmp_path: Path) -> None:
    """Grey images are not tripled: the first convolution takes one channel, at the same state-dict path, and
    the weights load into plain torchvision after the same one-line replacement of that convolution."""
    spec = registry.get_model_spec(name)
    model = build_model(name, num_classes=10, in_channels=1).eval()
    inputs = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = model(inputs)
    assert expected.shape == (2, 10)
    three = spec.params
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.in_channels == 1
    assert parameter_count(model) == three - 2 * stem.out_channels * stem.kernel_size[0] * stem.kernel_size[1]
    if name in ("tv:resnet18", "mobilenet_v3_small"):
        path = checkpoint.save(tmp_path / "grey.safetensors", model, meta_for(spec, 1, (64, 64)))
        from cnnctl.models._adapt import first_conv_name

        plain = torchvision.models.get_model(tv_name(spec), weights=None, num_classes=10)
        parent, _, attribute = first_conv_name(plain).rpartition(".")
        old = plain.get_submodule(first_conv_name(plain))
        setattr(plain.get_submodule(parent) if parent else plain, attribute,
                torch.nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False))
        plain.load_state_dict(load_file(str(path)))
        with torch.no_grad():
            assert torch.equal(plain.eval()(inputs), expected)


def test_dropout_only_where_the_head_has_one() -> None:
    mobile = build_model("mobilenet_v3_small", num_classes=10, in_channels=1, dropout=0.35)
    assert [m.p for m in mobile.modules() if isinstance(m, torch.nn.Dropout)] == [0.35]
    assert [m.p for m in build_model("vgg11", num_classes=10, in_channels=3).modules()
            if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]  # torchvision's default when not given
    small = build_model("resnet18", num_classes=10, in_channels=3, dropout=0.25)
    assert [m.p for m in small.modules() if isinstance(m, torch.nn.Dropout)] == [0.25]
    assert list(small.state_dict()) == list(build_model("resnet18", num_classes=10, in_channels=3).state_dict())
    with pytest.raises(UsageError, match="tv:resnet18 has no dropout"):
        build_model("tv:resnet18", num_classes=10, in_channels=3, dropout=0.2)
    with pytest.raises(UsageError, match=r"must be in \[0, 1\)"):
        build_model("mobilenet_v2", num_classes=10, in_channels=3, dropout=1.5)
    with pytest.raises(UsageError, match="did you mean dropout"):
        build_model("lenet", num_classes=10, in_channels=1, dropuot=0.1)


def test_summary_refuses_inputs_the_network_shrinks_away() -> None:
    with pytest.raises(UsageError, match=r"alexnet would shrink a 32x32 input below 1x1.*--input-size 3x63x63"):
        summarize_target("alexnet", "3x32x32", 10)
    ok = summarize_target("alexnet", "3x63x63", 10)
    assert ok.total_parameters == registry.get_model_spec("alexnet").params


def test_summary_of_a_checkpoint_and_the_list(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from cnnctl.cli import app

    spec = registry.get_model_spec("mobilenet_v3_small")
    model = build_model(spec.name, num_classes=10, in_channels=1)
    checkpoint.save(tmp_path / "grey.safetensors", model, meta_for(spec, 1, (28, 28)))
    runner = CliRunner()
    result = runner.invoke(app, ["summary", str(tmp_path / "grey.safetensors"), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["arch"] == "mobilenet_v3_small" and report["input_shape"] == [1, 28, 28]
    assert report["total_parameters"] == parameter_count(model) == spec.params - 2 * 16 * 3 * 3
    listed = json.loads(runner.invoke(app, ["list", "archs", "--json"]).stdout)["architectures"]
    by_name = {row["name"]: row for row in listed}
    assert by_name["vgg16"]["min_input"] == 32 and by_name["vgg16"]["params"] == 134_301_514
    assert by_name["resnet18"]["source"] == "cnnctl" and by_name["tv:resnet18"]["source"] == "torchvision"
    assert by_name["mobilenet_v3_small"]["aliases"] == ["tv:mobilenet_v3_small"]
