"""Training recipes: augmentation policies, mixup/cutmix, EMA, test-time augmentation and the learning-rate finder,
each checked against an independent computation on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import cnnctl
from cnnctl.checkpoint import unwrap
from cnnctl.cli import app
from cnnctl.data.augment import AugmentSettings, make_augmentation
from cnnctl.data.mixing import hard_labels, make_mixing
from cnnctl.engine.callbacks import Callback
from cnnctl.engine.lr_find import lr_find
from cnnctl.engine.tta import tta_probabilities, tta_views
from cnnctl.errors import UsageError
from cnnctl.models import build_model
from cnnctl.recipe.augmentations import AUGMENT_PRESETS
from cnnctl.recipe.config_file import build_train_config

runner = CliRunner()
FAST = {"dataset": "microdigits", "batch_size": 16, "threads": 1, "plots": False}
POLICIES = ["trivialaugment", "randaugment", "autoaugment-imagenet", "autoaugment-cifar10", "autoaugment-svhn",
            "augmix"]


def batch(count: int = 16, channels: int = 3, size: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (count, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.int64).to(torch.uint8)


@pytest.mark.parametrize("name", POLICIES)
def test_policies_keep_shape_and_dtype_draw_per_image_and_repeat_under_a_seed(name: str) -> None:
    augment = make_augmentation(f"crop-flip,{name}", (24, 24), AugmentSettings(channels=3), random_erasing=0.5)
    same = batch(1, size=24).expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    global_state = torch.get_rng_state()
    out = augment(same, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), global_state)  # torch's own generator is left as it was
    assert out.shape == same.shape and out.dtype == torch.uint8
    assert len({tuple(image.flatten().tolist()) for image in out}) > 8  # each image its own draw
    assert torch.equal(out, augment(same, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, augment(same, torch.Generator().manual_seed(6)))


def test_random_erasing_changes_each_image_only_inside_one_rectangle_of_its_own() -> None:
    images = batch(12, channels=1, size=28) | 1  # no zero pixels: erased ones (value 0) are exactly the changed
    out = make_augmentation("none", (28, 28), AugmentSettings(channels=1), random_erasing=1.0)(
        images, torch.Generator().manual_seed(0))
    for source, erased in zip(images, out):
        changed = (source != erased)[0]
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert len(rows) and len(cols)
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and int(changed.sum()) == box.numel()  # one filled rectangle, the rest its own image
        assert torch.all(erased[0][changed] == 0)


def test_policy_registry_lists_the_policies_and_refuses_colour_policies_on_grey_images() -> None:
    assert set(POLICIES) <= set(AUGMENT_PRESETS)
    with pytest.raises(UsageError, match="3-channel images, but this run's images have 1"):
        make_augmentation("autoaugment-svhn", (28, 28), AugmentSettings(channels=1))
    out = make_augmentation("randaugment", (28, 28), AugmentSettings(channels=1, randaugment_magnitude=0))(
        batch(4, channels=1, size=28), torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 28, 28)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, None), (None, 1.0), (0.2, 1.0)])
def test_mixed_targets_are_distributions_over_the_two_labels_of_each_pair(mixup, cutmix) -> None:
    mix = make_mixing(mixup, cutmix, num_classes=5)
    inputs, labels = torch.randn(32, 1, 28, 28), torch.arange(32) % 5
    mixed, targets = mix(inputs, labels, torch.Generator().manual_seed(1))
    assert mixed.shape == inputs.shape and targets.shape == (32, 5)
    assert torch.allclose(targets.sum(1), torch.ones(32))
    partner = labels.roll(1)  # torchvision mixes each image with the previous one in the batch
    assert torch.all(targets[torch.arange(32), labels] + targets[torch.arange(32), partner]
                     * (partner != labels) > 1 - 1e-6)
    dominant = hard_labels(targets)
    share = targets.gather(1, dominant[:, None])[:, 0]
    assert torch.all(share >= 0.5 - 1e-6)
    again = mix(inputs, labels, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)


class RecordWeights(Callback):
    """The raw weights after every optimizer step (user callbacks run after the EMA update)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, step, loss) -> None:
        self.steps.append({k: v.detach().clone() for k, v in unwrap(trainer.model).state_dict().items()})


def test_ema_weights_equal_the_hand_computed_average_and_are_what_is_saved(micro_digits, tmp_path: Path) -> None:
    recorder, decay = RecordWeights(), 0.6
    run = cnnctl.train("lenet5", epochs=3, ema=decay, arch_args={"batch_norm": True}, out=str(tmp_path),
                       callbacks=[recorder], precise_bn=False, **FAST)  # the average alone, as computed by hand
    assert len(recorder.steps) == 15  # 80 images, batches of 16, 3 epochs: the warm-up reaches 0.6 at update 13
    expected = dict(recorder.steps[0])  # the first update copies the weights
    for updates, weights in enumerate(recorder.steps[1:], start=1):
        step_decay = min(decay, (1 + updates) / (10 + updates))  # the warm-up: 2/11, 3/12, ... then 0.6
        for name, value in weights.items():
            expected[name] = (expected[name] * step_decay + value * (1 - step_decay) if value.is_floating_point()
                              else value)
    saved = load_file(str(run.run_dir / "last.safetensors"))
    assert "bn1.running_mean" in saved and int(saved["bn1.num_batches_tracked"]) == 15
    for name, value in expected.items():
        assert torch.allclose(saved[name], value, atol=1e-6), name
    assert not torch.allclose(saved["fc3.weight"], recorder.steps[-1]["fc3.weight"])  # not the raw weights
    result = runner.invoke(app, ["eval", str(run.run_dir / "last.safetensors"), "--split", "val", "--json"])
    assert result.exit_code == 0, result.output  # validation was of the average: eval of the file repeats it
    assert abs(json.loads(result.stdout)["accuracy"] - run.history[-1]["val_acc"]) < 1e-9


def test_resume_with_ema_mixup_and_a_policy_is_bit_exact(micro_digits, tmp_path: Path) -> None:
    options = {**FAST, "arch": "simplecnn", "ema": 0.8, "mixup": 0.4, "cutmix": 1.0, "augment": "shift,trivialaugment",
               "random_erasing": 0.3, "deterministic": True, "lr": 0.01, "optimizer": "sgd", "scheduler": "multistep",
               "milestones": [2]}  # a plan that does not depend on the total epochs, as in test_resume
    straight = cnnctl.train(epochs=3, out=str(tmp_path / "a"), **options)
    first = cnnctl.train(epochs=1, out=str(tmp_path / "b"), **options)
    resumed = cnnctl.train(resume=first.run_dir, epochs=3)
    for name in ("last.safetensors", "state.safetensors"):
        a, b = load_file(str(straight.run_dir / name)), load_file(str(resumed.run_dir / name))
        assert a.keys() == b.keys() and any(key.startswith("averaged.") for key in a) == (name == "state.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a), name
    strip = [{k: v for k, v in row.items() if k not in ("epoch_time_s", "images_per_s")} for row in straight.history]
    assert strip == [{k: v for k, v in row.items() if k not in ("epoch_time_s", "images_per_s")}
                     for row in resumed.history]
    assert 0 <= straight.history[-1]["train_acc"] <= 1


def test_tta_of_a_symmetric_image_is_the_plain_prediction_and_flip_crop_averages_ten_views(
        micro_digits, tmp_path: Path) -> None:
    run = cnnctl.train("simplecnn", epochs=1, out=str(tmp_path), **FAST)
    images = batch(6, channels=1, size=28)
    symmetric = torch.maximum(images, images.flip(3))
    plain_labels, plain = cnnctl.predict(run, symmetric)
    labels, averaged = cnnctl.predict(run, symmetric, tta="flip")
    assert torch.allclose(plain, averaged, atol=1e-6) and torch.equal(plain_labels, labels)
    model, _ = cnnctl.load(run)
    inputs = torch.randn(3, 1, 28, 28)
    views = tta_views(inputs, "flip-crop")
    assert len(views) == 10 and all(view.shape == inputs.shape for view in views)
    assert len(tta_views(inputs, "crop")) == 5 and torch.equal(tta_views(inputs, "crop")[1][..., 1:, 1:],
                                                                inputs[..., :-1, :-1])  # shifted by one pixel
    with torch.inference_mode():
        by_hand = sum(model(view.contiguous()).softmax(1) for view in views) / 10
        assert torch.allclose(tta_probabilities(model, inputs, "flip-crop"), by_hand, atol=1e-6)
    result = runner.invoke(app, ["eval", str(run.run_dir), "--json", "--tta", "flip-crop"])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["eval", str(run.run_dir), "--tta", "mirror"])
    assert bad.exit_code != 0 and len(bad.stderr.strip().splitlines()) == 1


def test_lr_find_suggests_a_rate_inside_the_sweep_reproducibly_and_draws_it(micro_digits, tmp_path: Path) -> None:
    config = build_train_config({"arch": "simplecnn", **FAST}, source="test")
    first = lr_find(config, steps=30, start_lr=1e-5, end_lr=1.0, plot=tmp_path / "sweep.png")
    again = lr_find(config, steps=30, start_lr=1e-5, end_lr=1.0)
    assert first.lrs[0] == pytest.approx(1e-5) and first.lrs[-1] <= 1.0
    assert first.lrs[0] <= first.suggestion <= first.lrs[-1]
    lowest = min(range(len(first.smoothed)), key=first.smoothed.__getitem__)
    assert first.suggestion == pytest.approx(max(first.lrs[lowest] / 10, first.lrs[0]))
    assert again.losses == first.losses and again.suggestion == first.suggestion
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["lr-find", "simplecnn", "--dataset", "microdigits", "--batch-size", "16",
                                 "--threads", "1", "--steps", "30", "--start-lr", "1e-5", "--end-lr", "1",
                                 "--plot", str(tmp_path / "cli.png")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"suggested lr: {first.suggestion:.3g}"


def test_lr_auto_trains_with_the_sweeps_suggestion_and_saves_it(micro_digits, tmp_path: Path) -> None:
    run = cnnctl.train("simplecnn", epochs=1, lr="auto", out=str(tmp_path), **FAST)
    suggestion = lr_find(build_train_config({"arch": "simplecnn", **FAST}, source="test")).suggestion
    saved = json.loads((run.run_dir / "config.json").read_text())["lr"]
    assert saved == float(f"{suggestion:.3g}") and run.history[0]["lr"] <= saved


@pytest.mark.parametrize(("args", "fragment"), [
    (["--mixup", "0"], "--mixup must be positive"),
    (["--cutmix", "-1"], "--cutmix must be positive"),
    (["--ema", "1"], "--ema must be in (0, 1)"),
    (["--ema", "0"], "--ema must be in (0, 1)"),
    (["--augment", "shift,trivialaugmnt"], "trivialaugment"),
    (["--augment", "autoaugment-cifar10"], "3-channel images"),
    (["--lr", "fast"], "--lr must be a finite number"),
])
def test_bad_recipe_options_are_one_line_before_training(micro_digits, tmp_path: Path, args, fragment) -> None:
    result = runner.invoke(app, ["train", "simplecnn", "--dataset", "microdigits", "--threads", "1", "--no-plots",
                                 "--out", str(tmp_path), *args])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not list(tmp_path.rglob("*.safetensors"))


@pytest.mark.parametrize("name", ["mnist-recipe.yaml", "mnist-best.yaml"])
def test_the_committed_mnist_recipes_are_valid_configs_for_real_mnist(name: str) -> None:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / name
    config = build_train_config({}, path)
    assert (config.dataset, config.val_split) == ("mnist", 0)  # all 60,000 training images
    model = build_model(config.arch, num_classes=10, in_channels=1, **config.arch_args)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
