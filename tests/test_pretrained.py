"""--pretrained (local weights only, prefixes stripped, first convolution adapted, head re-initialised, every
leftover key reported, nothing unpickled) and --freeze-epochs (frozen weights bit-identical, then trained)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cnnctl import registry
from cnnctl.cli import app
from cnnctl.engine.freeze import HeadOnlyPhase
from cnnctl.engine.optim import build_optimizer
from cnnctl.errors import CheckpointError, UsageError
from cnnctl.models import build_model
from cnnctl.models.pretrained import load_pretrained
from cnnctl.recipe.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def features(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A ResNet's pooled features (everything before ``fc``)."""
    body = torch.nn.Sequential(*list(model.children())[:-1])
    with torch.no_grad():
        return body(inputs).flatten(1)


def test_rgb_1000_class_weights_fine_tune_a_grey_10_class_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model("tv:resnet18", num_classes=1000, in_channels=3).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that they visibly load
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    weights = source.state_dict()
    path = tmp_path / "imagenet.pth"  # as DataParallel training scripts save it
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in weights.items()}}, path)

    spec = registry.get_model_spec("tv:resnet18")
    torch.manual_seed(2)
    target = build_model("tv:resnet18", num_classes=10, in_channels=1)
    fresh_head = target.fc.weight.detach().clone()
    lines: list[str] = []
    report = load_pretrained(target, spec, path, log=lines.append)

    assert report.stripped_prefixes == ["module."]
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(target.fc.weight, fresh_head)
    assert torch.equal(target.conv1.weight, weights["conv1.weight"].sum(dim=1, keepdim=True))
    loaded = target.state_dict()
    for key, value in weights.items():
        if key not in ("conv1.weight", "fc.weight", "fc.bias"):
            assert torch.equal(loaded[key], value), key
    # Summing the RGB filters is exact: a grey image through the adapted stem gives the features that the RGB
    # network gives for the same image with its channels repeated.
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(features(target.eval(), grey), features(source, grey.repeat(1, 3, 1, 1)))
    assert any("classifier re-initialised (the weights have 1000 classes, the model 10): fc.weight, fc.bias"
               in line for line in lines), lines
    assert any("conv1.weight 3 → 1 input channels" in line for line in lines), lines


def test_safetensors_with_wrapper_prefix_reports_every_leftover_key(tmp_path: Path) -> None:
    spec = registry.get_model_spec("mobilenet_v3_small")
    source = build_model(spec.name, num_classes=10, in_channels=3)
    weights = {f"model.{k}": v.clone() for k, v in source.state_dict().items()}
    del weights["model.features.1.block.0.1.running_mean"]
    weights["model.aux_head.weight"] = torch.zeros(3, 4)
    path = tmp_path / "lightning.safetensors"
    save_file(weights, str(path))

    target = build_model(spec.name, num_classes=10, in_channels=3)
    lines: list[str] = []
    report = load_pretrained(target, spec, path, log=lines.append)
    assert report.missing == ["features.1.block.0.1.running_mean"]
    assert report.unexpected == ["model.aux_head.weight"]
    assert report.reinitialised == [] and report.adapted == []
    assert torch.equal(target.classifier[3].weight, source.classifier[3].weight)
    assert "1 missing, left at their initial values: features.1.block.0.1.running_mean" in "\n".join(lines)
    assert "1 unexpected, ignored: model.aux_head.weight" in "\n".join(lines)


class WritesAFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # what a malicious .pth would do
        return (Path.touch, (self.marker,))


def test_pth_with_pickled_objects_is_refused_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    model = build_model("lenet5", num_classes=10, in_channels=1)
    torch.save({"state_dict": model.state_dict(), "extra": WritesAFileWhenUnpickled(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="cannot be read as plain tensors"):
        load_pretrained(model, registry.get_model_spec("lenet5"), path)
    assert not marker.exists()


def test_unusable_weights_are_clear_errors(tmp_path: Path) -> None:
    spec = registry.get_model_spec("resnet18")
    model = build_model("resnet18", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError, match="does not exist — pass a weights file, or `--pretrained imagenet`"):
        load_pretrained(model, spec, tmp_path / "resnet18-imagenet.pth")
    lenet = tmp_path / "lenet.safetensors"
    save_file(build_model("lenet5", num_classes=10, in_channels=1).state_dict(), str(lenet))
    with pytest.raises(CheckpointError, match=r"does not fit resnet18: shape mismatch conv1.weight"):
        load_pretrained(model, spec, lenet)
    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(unrelated))
    with pytest.raises(CheckpointError, match="none of its 1 tensors match resnet18"):
        load_pretrained(model, spec, unrelated)
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(UsageError, match="unknown weights format .npz"):
        load_pretrained(model, spec, tmp_path / "weights.npz")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_frozen_phase_leaves_the_body_bit_identical_then_trains_it(optimizer: str) -> None:
    torch.manual_seed(0)
    model = build_model("tv:resnet18", num_classes=4, in_channels=3)
    config = TrainConfig(arch="tv:resnet18", optimizer=optimizer, lr=0.05, weight_decay=0.1, scheduler="none")
    phase = HeadOnlyPhase(model, "fc", epochs=1)
    optimizer_ = build_optimizer(config, model.parameters())  # over every parameter, in both phases
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4

    def train_steps(epoch: int) -> None:
        phase.begin_epoch(epoch)
        model.train()
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            optimizer_.zero_grad(set_to_none=True)
            loss.backward()
            optimizer_.step()

    train_steps(1)
    after_frozen = model.state_dict()
    for key, value in before.items():
        if key.startswith("fc."):
            assert not torch.equal(after_frozen[key], value), key
        else:  # weights, weight decay and BatchNorm statistics all untouched
            assert torch.equal(after_frozen[key], value), key
    train_steps(2)
    after = model.state_dict()
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert not torch.equal(after["layer4.1.bn2.running_mean"], before["layer4.1.bn2.running_mean"])
    assert all(p.requires_grad for p in model.parameters())


@pytest.fixture()
def tiny_digits_5(tiny_digits) -> Iterator[registry.DatasetSpec]:
    """The tiny digits relabelled into 5 classes (digit mod 5): a new task with another number of classes."""
    def load(directory: Path, split: str):
        data = tiny_digits.loader(directory, split)
        return dataclasses.replace(data, labels=data.labels % 5, classes=tuple("01234"))

    spec = dataclasses.replace(tiny_digits, name="tinydigits5", classes=tuple("01234"), loader=load)
    registry.register_dataset(spec)
    yield spec
    registry._DATASETS.pop("tinydigits5", None)


def test_fine_tune_with_another_number_of_classes(tiny_digits_5, tmp_path: Path) -> None:
    runner = CliRunner()
    base = runner.invoke(app, ["train", "lenet5", "--dataset", "tinydigits", "--epochs", "2", "--batch-size", "32",
                               "--out", str(tmp_path / "runs"), "--name", "base", "--quiet"], catch_exceptions=False)
    assert base.exit_code == 0, base.output
    pretrained = tmp_path / "runs" / "base" / "1" / "best.safetensors"

    probe = runner.invoke(app, ["train", "lenet5", "--dataset", "tinydigits5", "--epochs", "1", "--batch-size", "32",
                                "--pretrained", str(pretrained), "--freeze-epochs", "1", "--out",
                                str(tmp_path / "runs"), "--name", "probe"], catch_exceptions=False)
    assert probe.exit_code == 0, probe.output
    assert "classifier re-initialised (the weights have 10 classes, the model 5): fc3.weight, fc3.bias" \
        in probe.output
    assert "training only the classifier fc3 (425 parameters)" in probe.output
    start, probed = load_file(str(pretrained)), load_file(str(tmp_path / "runs" / "probe" / "1" / "last.safetensors"))
    assert probed["fc3.weight"].shape == (5, 84)
    assert all(torch.equal(probed[k], start[k]) for k in start if not k.startswith("fc3."))

    tuned = runner.invoke(app, ["train", "lenet5", "--dataset", "tinydigits5", "--epochs", "2", "--batch-size", "32",
                                "--pretrained", str(pretrained), "--freeze-epochs", "1", "--out",
                                str(tmp_path / "runs"), "--name", "tuned"], catch_exceptions=False)
    assert tuned.exit_code == 0, tuned.output
    assert "epoch 2: all layers unfrozen" in tuned.output
    results = json.loads((tmp_path / "runs" / "tuned" / "1" / "results.json").read_text())
    assert results["test_acc"] >= 0.9, results
    final = load_file(str(tmp_path / "runs" / "tuned" / "1" / "last.safetensors"))
    assert not torch.equal(final["conv1.weight"], start["conv1.weight"])
    config = json.loads((tmp_path / "runs" / "tuned" / "1" / "config.json").read_text())
    assert config["pretrained"] == str(pretrained) and config["freeze_epochs"] == 1


def test_dropout_option_reaches_the_model_and_the_checkpoint(tiny_digits, tmp_path: Path) -> None:
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "tv:resnet18", "--dataset", "tinydigits", "--dropout", "0.3",
                                  "--out", str(tmp_path)])
    assert refused.exit_code == 2 and "tv:resnet18 has no dropout" in refused.output
    assert not (tmp_path / "tv:resnet18-tinydigits").exists()
    result = runner.invoke(app, ["train", "lenet", "--dataset", "tinydigits", "--epochs", "1", "--dropout", "0.3",
                                 "--out", str(tmp_path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from cnnctl import checkpoint

    model, meta = checkpoint.load(tmp_path / "lenet-tinydigits" / "1")
    assert meta.arch_args == {"dropout": 0.3}
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.3]
