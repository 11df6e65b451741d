"""--pretrained imagenet: torchvision's published weights fetched into torch's cache (folder and HTTP mirrors on
127.0.0.1, resumed, verified by the SHA-256 prefix in the name on download and on every use), offline use with no
socket opened, and the weights' preprocessing carried into the checkpoint and applied by eval, predict, export
and cnnctl.load exactly as ``weights.transforms()`` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dataset_files import write_image_folder
from test_download import Server, serve, server  # noqa: F401 - the 127.0.0.1 HTTP server fixture
from typer.testing import CliRunner
from weights_files import make_weights_file, publish

from cnnctl.cli import app
from cnnctl.errors import CnnctlError, DownloadError, UsageError
from cnnctl.models import weights

runner = CliRunner()
ARCH = "mobilenet_v3_small"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_file(tmp_path_factory.mktemp("made"), ARCH)


@pytest.fixture()
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh torch cache ($TORCH_HOME) and no inherited mirror or offline setting."""
    for name in ("CNNCTL_WEIGHTS_MIRROR", "CNNCTL_OFFLINE", "CNNCTL_MIRROR", "http_proxy", "https_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture()
def mirror(tmp_path: Path, weights_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder mirror holding the weights file under its published name; torchvision resolves to it."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    shutil.copy(weights_file, folder / weights_file.name)
    publish(monkeypatch, ARCH, weights_file.name)
    return folder


def no_leftovers(folder: Path) -> None:
    assert not list(folder.glob("*.part")), "a half-written file was left in the cache"


# --------------------------------------------------------------------------------------------------------------
# fetching and verifying


def test_resolves_through_torchvision_enum() -> None:
    from torchvision.models import get_model_weights

    found = weights.resolve(ARCH, "imagenet")
    real = get_model_weights(ARCH).DEFAULT
    assert found.url == real.url and found.file_name == real.url.rsplit("/", 1)[1]
    assert found.sha256_prefix and found.file_name.endswith(f"-{found.sha256_prefix}.pth")
    assert found.label == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    v1 = weights.resolve("tv:resnet50", "IMAGENET1K_V1").preprocessing
    v2 = weights.resolve("tv:resnet50", "ResNet50_Weights.IMAGENET1K_V2").preprocessing
    assert (v1.resize, v1.crop) == (256, (224, 224)) and (v2.resize, v2.crop) == (232, (224, 224))
    with pytest.raises(UsageError, match="IMAGENET1K_V1"):
        weights.resolve(ARCH, "IMAGENET1K_V9")
    with pytest.raises(UsageError, match="lenet5 has no published ImageNet weights"):
        weights.resolve("lenet5", "imagenet")


def test_list_names_the_weights_and_their_top1_as_torchvision_does() -> None:
    from torchvision.models import get_model_weights

    from cnnctl.models.torchvision_zoo import IMAGENET_DEFAULT, ZOO

    for entry in ZOO:
        enum = get_model_weights(entry.tv_name)
        label, top1 = IMAGENET_DEFAULT[entry.tv_name]
        assert label == f"{enum.__name__}.{enum.DEFAULT.name}"
        assert top1 == enum.DEFAULT.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    listed = json.loads(runner.invoke(app, ["list", "archs", "--json"]).stdout)["architectures"]
    row = next(row for row in listed if row["name"] == ARCH)
    assert row["imagenet_weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1" and row["imagenet_top1"] == 67.668


def test_folder_mirror_fills_torchs_cache_and_the_cached_file_is_reused(cache: Path, mirror: Path,
                                                                         weights_file: Path) -> None:
    found = weights.resolve(ARCH, "imagenet")
    path = weights.ensure_weights_file(found, mirror=str(mirror))
    assert path == cache / weights_file.name and path.read_bytes() == weights_file.read_bytes()
    no_leftovers(cache)
    (mirror / weights_file.name).unlink()  # the cached copy is used: nothing is fetched again
    logs: list[str] = []
    assert weights.ensure_weights_file(found, mirror=str(mirror), log=logs.append) == path
    assert logs == []


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_damaged_cache_file_is_detected_and_fetched_again(cache: Path, mirror: Path, weights_file: Path,
                                                           damage: str) -> None:
    data = weights_file.read_bytes()
    cache.mkdir(parents=True)
    cached = cache / weights_file.name
    if damage == "truncated":
        cached.write_bytes(data[: len(data) // 2])
    else:  # same size, one byte changed
        cached.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    logs: list[str] = []
    path = weights.ensure_weights_file(weights.resolve(ARCH, "imagenet"), mirror=str(mirror), log=logs.append)
    assert path.read_bytes() == data
    assert any("does not match the SHA-256 prefix" in line for line in logs), logs
    no_leftovers(cache)


def test_http_download_resumes_a_partial_file(cache: Path, weights_file: Path, server: Server,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = weights_file.read_bytes()
    server.routes[f"/models/{weights_file.name}"] = serve(data)
    publish(monkeypatch, ARCH, weights_file.name, url_base=f"{server.url}/models")  # the "official" URL
    cache.mkdir(parents=True)
    (cache / f"{weights_file.name}.part").write_bytes(data[:3_000_000])
    path = weights.ensure_weights_file(weights.resolve(ARCH, "imagenet"))
    assert path.read_bytes() == data
    assert [seen.range for seen in server.requests] == ["bytes=3000000-"]
    no_leftovers(cache)


def test_mirror_serving_wrong_bytes_is_refused_naming_the_url(cache: Path, weights_file: Path,
                                                              server: Server,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server.routes[f"/bad/{weights_file.name}"] = serve(b"not the weights" * 1000)
    publish(monkeypatch, ARCH, weights_file.name, url_base=f"{server.url}/gone")  # official: 404
    with pytest.raises(DownloadError) as raised:
        weights.ensure_weights_file(weights.resolve(ARCH, "imagenet"), mirror=f"{server.url}/bad/")
    message = str(raised.value)
    assert f"{server.url}/bad/{weights_file.name} (checksum mismatch)" in message and "\n" not in message
    assert not (cache / weights_file.name).exists()
    no_leftovers(cache)
    result = runner.invoke(app, ["download", "weights", ARCH, "--weights-mirror", f"{server.url}/bad/"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "checksum mismatch" in errors[0]


def test_offline_missing_file_is_one_line_and_opens_no_socket(cache: Path, mirror: Path, tmp_path: Path,
                                                              weights_file: Path, no_network: list[object]) -> None:
    data = tmp_path / "images"
    write_image_folder(data, ("a", "b"), 4, size=24)
    result = runner.invoke(app, ["train", ARCH, "--data", str(data), "--pretrained", "imagenet", "--offline",
                                 "--epochs", "1", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert weights_file.name in lines[0] and str(cache) in lines[0] and "--offline" in lines[0]
    assert no_network == []
    assert not (tmp_path / "runs").exists()  # refused before any work


# --------------------------------------------------------------------------------------------------------------
# the acceptance run and the preprocessing it carries


def transforms_input(path: Path) -> torch.Tensor:
    """An image as ``weights.transforms()`` prepares it for the real weights (independently of cnnctl)."""
    from torchvision.io import ImageReadMode, read_image
    from torchvision.models import get_model_weights

    return get_model_weights(ARCH).DEFAULT.transforms()(read_image(str(path), mode=ImageReadMode.RGB))


def test_acceptance_download_then_train_offline_and_every_user_applies_the_weights_preprocessing(
        cache: Path, mirror: Path, tmp_path: Path, weights_file: Path, no_network: list[object]) -> None:
    from torchvision.models import get_model_weights

    import cnnctl

    fetched = runner.invoke(app, ["download", "weights", ARCH, "--weights-mirror", str(mirror)])
    assert fetched.exit_code == 0, fetched.output
    assert (cache / weights_file.name).read_bytes() == weights_file.read_bytes()
    data = tmp_path / "images"
    write_image_folder(data / "train", ("red", "green"), 8, size=40)
    test_files = write_image_folder(data / "test", ("red", "green"), 3, size=40, seed=5)
    # the weights' own size (without --img-size these 40-pixel images would train at 96), and the training of a
    # random head this check was written with: two steps of the fine-tuning defaults leave near-equal
    # probabilities, whose argmax (compared below between eval and an independent computation) rounding decides
    run = runner.invoke(app, ["train", ARCH, "--data", str(data), "--pretrained", "imagenet", "--offline",
                              "--epochs", "1", "--batch-size", "8", "--no-plots", "--threads", "1",
                              "--img-size", "224", "--head-init", "random", "--lr", "1e-3", "--label-smoothing",
                              "0", "--crop-scale", "0.08", "--out", str(tmp_path / "runs")])
    assert run.exit_code == 0, run.output
    assert "loaded 242 tensors" in run.stderr and "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in run.stderr
    best = next((tmp_path / "runs").glob("*/1/best.safetensors"))

    expected = get_model_weights(ARCH).DEFAULT.transforms()
    model, prep = cnnctl.load(best)
    assert prep.mean == tuple(expected.mean) and prep.std == tuple(expected.std)
    assert (prep.resize, prep.image_size, prep.interpolation) == (256, (224, 224), "bilinear")
    assert prep.extra["weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    config = model.cnnctl_meta.config
    assert (config["backbone_lr_scale"], config["augment"]) == (0.1, "resized-crop-flip")

    # predict: the model sees exactly transforms()'s tensor
    files = sorted(path for paths in test_files.values() for path in paths)
    independent = torch.stack([transforms_input(path) for path in files])
    with torch.inference_mode():
        wanted = model(independent).softmax(1)
    _, probabilities = cnnctl.predict(model, [str(path) for path in files])
    torch.testing.assert_close(probabilities, wanted, atol=1e-5, rtol=0)

    # eval: the accuracy of those predictions on test/
    classes = model.cnnctl_meta.classes
    labels = torch.tensor([classes.index("red" if "red" in path.name else "green") for path in files])
    evaluated = runner.invoke(app, ["eval", str(best), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    accuracy = json.loads(evaluated.stdout)["accuracy"]
    assert accuracy == pytest.approx(float((wanted.argmax(1) == labels).float().mean()), abs=1e-6)

    # export: the preprocessing document says resize 256 → crop 224, and the export agrees on transforms()'s input
    exported = runner.invoke(app, ["export", str(best), "--format", "torchscript"])
    assert exported.exit_code == 0, exported.output
    document = json.loads(best.with_name("best.preprocessing.json").read_text())
    assert (document["resize"], document["image_size"], document["interpolation"]) == (256, [224, 224], "bilinear")
    assert document["mean"] == list(expected.mean) and any("shorter side is 256" in s for s in document["steps"])
    scripted = torch.jit.load(str(best.with_name("best.torchscript.pt")))
    with torch.inference_mode():
        torch.testing.assert_close(scripted(independent[:1]).softmax(1), wanted[:1], atol=1e-5, rtol=0)
    assert no_network == []
    summary = runner.invoke(app, ["summary", str(best)])
    assert "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in summary.stdout
    summary = json.loads(runner.invoke(app, ["summary", str(best), "--json"]).stdout)
    assert summary["pretrained_weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert summary["preprocessing"]["resize"] == 256


def test_old_preprocessing_without_resize_loads_unchanged() -> None:
    from cnnctl.data.base import Preprocessing
    from cnnctl.data.loader import fit_to_input

    old = {"channels": 1, "image_size": [28, 28], "pad": 2, "mean": [0.1307], "std": [0.3081], "extra": {}}
    prep = Preprocessing.from_dict(old)
    assert (prep.resize, prep.interpolation) == (None, "bilinear")
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert fit_to_input(images, prep).shape == (2, 1, 32, 32)


def test_resize_and_crop_equals_weights_transforms_on_odd_sizes() -> None:
    from torchvision.models import get_model_weights

    from cnnctl.data.loader import Normalizer, resize_and_crop

    for tv_name in ("tv:resnet50", "efficientnet_b0"):  # 232 → 224 bilinear; 256 → 224 bicubic
        found = weights.resolve(tv_name, "imagenet").preprocessing
        transforms = get_model_weights(tv_name.removeprefix("tv:")).DEFAULT.transforms()
        image = torch.randint(0, 256, (3, 301, 257), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        ours = resize_and_crop(image, found.crop, found.resize, found.interpolation)
        normalised = Normalizer(found.mean, found.std, torch.device("cpu"))(ours.unsqueeze(0))[0]
        torch.testing.assert_close(normalised, transforms(image), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# fine-tuning controls


def test_backbone_learns_at_a_tenth_of_the_heads_rate_through_the_schedule() -> None:
    from cnnctl.engine.optim import build_optimizer
    from cnnctl.engine.schedules import build_schedule
    from cnnctl.models import build_model
    from cnnctl.models.pretrained import parameter_groups
    from cnnctl.recipe.config import TrainConfig

    config = TrainConfig(arch=ARCH, pretrained="some.safetensors", epochs=2)
    config.resolve_defaults()
    assert config.backbone_lr_scale == 0.1
    model = build_model(ARCH, num_classes=3, in_channels=3)
    optimizer = build_optimizer(config, parameter_groups(model, "classifier.3", config))
    body, head = optimizer.param_groups
    assert sum(p.numel() for p in head["params"]) == 1024 * 3 + 3
    schedule = build_schedule(config, optimizer, steps_per_epoch=5)
    for step in (0, 3, 9):
        schedule.apply(step)
        assert body["lr"] == pytest.approx(0.1 * head["lr"])
    with pytest.raises(UsageError, match="backbone-lr-scale"):
        TrainConfig(arch=ARCH, backbone_lr_scale=0).validate()


@pytest.mark.parametrize("mode", ["replicate", "sum"])
def test_grey_images_fine_tune_with_colour_weights(cache: Path, mirror: Path, tmp_path: Path, weights_file: Path,
                                                   mode: str) -> None:
    """Both ways of meeting colour weights with grey images train to a sensible accuracy (the weights are a
    fresh initialisation here, so the whole network trains at the head's rate)."""
    import cnnctl
    from cnnctl.models.pretrained import read_weights

    data = tmp_path / "grey"
    write_image_folder(data, ("dark", "mid", "light"), 20, size=24, grey=True)  # 45 train, 15 val
    result = cnnctl.train(ARCH, data_dir=str(data), pretrained="imagenet", weights_mirror=str(mirror),
                          grey_input=mode, epochs=8, batch_size=9, img_size=32, val_split=15, lr=3e-3,
                          backbone_lr_scale=1.0, out=str(tmp_path / "runs"), plots=False, threads=1)
    model, prep = cnnctl.load(result)
    first_conv = model.features[0][0].weight
    if mode == "replicate":
        assert prep.channels == 3 and first_conv.shape[1] == 3
    else:
        assert prep.channels == 1 and first_conv.shape[1] == 1 and len(prep.mean) == 1
    assert (prep.image_size, prep.resize) == ((32, 32), 37)  # --img-size 32 scales 256 → 224 to 37 → 32
    print(f"grey fine-tuning ({mode}): val accuracy {result.history[-1]['val_acc']:.3f}")
    assert result.history[-1]["val_acc"] >= 0.85  # chance: 0.33
    assert read_weights(weights_file)["features.0.0.weight"].shape[1] == 3


def test_pretrained_name_for_a_file_path_still_means_the_file(tmp_path: Path) -> None:
    assert not weights.is_weights_name(str(tmp_path / "w.pth"))
    assert not weights.is_weights_name("runs/a/best.safetensors")
    assert weights.is_weights_name("imagenet") and weights.is_weights_name("ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(CnnctlError, match="does not exist"):
        from cnnctl.models.pretrained import read_weights

        read_weights(tmp_path / "w.pth")


def test_offline_config_check_uses_a_folder_mirror(cache: Path, mirror: Path, weights_file: Path,
                                                   no_network: list[object]) -> None:
    from cnnctl.engine.configure import check_config
    from cnnctl.recipe.config import TrainConfig

    config = TrainConfig(arch=ARCH, pretrained="imagenet", offline=True, weights_mirror=str(mirror))
    check_config(config)
    assert [path.name for path in cache.glob("*.pth")] == [weights_file.name]
    assert no_network == []
    with pytest.raises(DownloadError, match="--offline"):
        check_config(TrainConfig(arch="squeezenet1_1", pretrained="imagenet", offline=True))


def test_download_weights_dest_makes_a_folder_to_carry_to_an_offline_machine(cache: Path, mirror: Path,
                                                                              weights_file: Path,
                                                                              tmp_path: Path) -> None:
    dest = tmp_path / "carry"
    result = runner.invoke(app, ["download", "weights", ARCH, "--weights-mirror", str(mirror), "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert (dest / weights_file.name).read_bytes() == weights_file.read_bytes()
    assert not cache.exists()  # the machine's own cache is left alone
    assert str(dest / weights_file.name) in result.stdout
