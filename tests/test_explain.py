"""cnnctl explain: a target layer for every architecture, heat maps at the image's size that point at the evidence
(a model trained to find a pattern in one corner), the PNGs, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl import checkpoint, registry
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.cli import app
from cnnctl.data.base import Preprocessing
from cnnctl.engine.heatmaps import attribution_maps, default_target_layer
from cnnctl.errors import UsageError
from cnnctl.models import build_model

ALL_ARCHS = sorted(registry.models())
SIDE = 28
CORNERS = {"top-left": (0, 0), "top-right": (0, 1), "bottom-left": (1, 0), "bottom-right": (1, 1)}
# Where torchvision's ImageNet models end their convolutional trunk, as Grad-CAM users name it.
EXPECTED_LAYERS = {"lenet5": "relu2", "simplecnn": "relu2", "smallvgg": "relu2_2", "resnet18": "layer4",
                   "tv:resnet50": "layer4", "mobilenet_v3_small": "features", "vgg11": "features",
                   "densenet121": "features", "squeezenet1_1": "features", "shufflenet_v2_x0_5": "conv5",
                   "regnet_x_400mf": "trunk_output", "convnext_tiny": "features", "alexnet": "features"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_input(spec: registry.ModelSpec) -> tuple[int, int, int]:
    if spec.fixed_input:
        return (spec.in_channels, *spec.input_size)
    side = max(64, spec.min_input)  # large enough for a map of more than 1x1 at the last block of every net
    return (spec.in_channels, side, side)


@pytest.mark.parametrize("name", ALL_ARCHS)
def test_every_architecture_gets_a_target_layer(name: str) -> None:
    """Built on the meta device where the builder allows (shapes flow through the forward pass without the cost
    of real weights: VGG-16 has 134 M), else for real at a small input."""
    spec = registry.get_model_spec(name)
    device = "meta"
    try:
        with torch.device(device):
            model = build_model(name, num_classes=4, in_channels=spec.in_channels).eval()
        shape = (spec.in_channels, *spec.input_size)
    except NotImplementedError:  # an initialiser that reads values (RegNet)
        device = "cpu"
        model = build_model(name, num_classes=4, in_channels=spec.in_channels).eval()
        shape = small_input(spec)
    layer = default_target_layer(model, shape, spec.classifier)
    if name in EXPECTED_LAYERS:
        assert layer == EXPECTED_LAYERS[name]
    seen: list[torch.Size] = []
    hook = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    model(torch.zeros(1, *shape, device=device))
    hook.remove()
    assert len(seen[-1]) == 4 and seen[-1][2] * seen[-1][3] > 1  # a spatial map, not the pooled vector


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "mobilenet_v3_small", "squeezenet1_1"])
def test_grad_cam_gives_a_map_at_the_input_size(name: str) -> None:
    spec = registry.get_model_spec(name)
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, in_channels=spec.in_channels).eval()
    shape = small_input(spec)
    layer = default_target_layer(model, shape, spec.classifier)
    for method in ("gradcam", "gradcam++"):
        maps = attribution_maps(model, torch.randn(2, *shape), torch.tensor([1, 3]), method, layer=layer)
        assert maps.shape == (2, *shape[1:]) and torch.isfinite(maps).all()
        peaks = maps.flatten(1).amax(1).tolist()
        assert maps.min() >= 0 and all(peak in (0.0, 1.0) for peak in peaks)  # scaled to its peak (or none)


CLASSES = ["plus", "ring", "cross", "bars"]


def patterns() -> list[torch.Tensor]:
    """6x6 class patterns: a plus, a hollow square, a diagonal cross, two bars."""
    plus = torch.zeros(6, 6, dtype=torch.bool)
    plus[2:4, :] = plus[:, 2:4] = True
    ring = torch.ones(6, 6, dtype=torch.bool)
    ring[1:5, 1:5] = False
    cross = torch.eye(6, dtype=torch.bool) | torch.eye(6, dtype=torch.bool).flip(1)
    bars = torch.zeros(6, 6, dtype=torch.bool)
    bars[0] = bars[5] = True
    return [plus, ring, cross, bars]


def corner_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """28x28 grey noise with the class's 6x6 pattern in a random corner and a filled square, the same for every
    class, in another corner. Returns images, labels, corners."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 50, (count, 1, SIDE, SIDE), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
    corners = torch.randint(0, 4, (count,), generator=generator)
    shapes = patterns()
    for index in range(count):
        corner = int(corners[index])
        distractor = (corner + 1 + int(torch.randint(0, 3, (1,), generator=generator))) % 4
        for where, pattern in ((corner, shapes[int(labels[index])]),
                               (distractor, torch.ones(6, 6, dtype=torch.bool))):
            row, col = divmod(where, 2)
            top = 2 + row * 18 + int(torch.randint(0, 3, (1,), generator=generator))
            left = 2 + col * 18 + int(torch.randint(0, 3, (1,), generator=generator))
            images[index, 0, top:top + 6, left:left + 6][pattern] = 255
    return images, labels, corners


@pytest.fixture(scope="module")
def corner_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow smallvgg trained (plain PyTorch, a few seconds) to tell the corner patterns apart."""
    torch.manual_seed(0)
    images, labels, _ = corner_images(1200, seed=1)
    model = build_model("smallvgg", num_classes=len(CLASSES), in_channels=1, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs = (images.float() / 255 - 0.5) / 0.5
    for _epoch in range(6):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 50):
            batch = order[start:start + 50]
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test_images, test_labels, _ = corner_images(200, seed=2)
    with torch.no_grad():
        accuracy = (model((test_images.float() / 255 - 0.5) / 0.5).argmax(1) == test_labels).float().mean()
    assert accuracy >= 0.95, f"the corner model did not learn: {accuracy:.2%}"
    meta = CheckpointMeta(arch="smallvgg", arch_args={"width": 8}, classes=CLASSES,
                          preprocessing=Preprocessing(1, (SIDE, SIDE), 0, (0.5,), (0.5,)), dataset="corners")
    return checkpoint.save(tmp_path_factory.mktemp("corners") / "best.safetensors", model, meta)


def quadrant(heatmap: torch.Tensor) -> tuple[int, int]:
    """(row, column) half of the map's peak."""
    row, col = divmod(int(heatmap.argmax()), heatmap.shape[1])
    return int(row >= heatmap.shape[0] // 2), int(col >= heatmap.shape[1] // 2)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "integrated-gradients"])
def test_the_heat_map_peaks_at_the_corner_with_the_evidence(corner_checkpoint: Path, method: str) -> None:
    images, labels, corners = corner_images(16, seed=3)
    explanations = cnnctl.explain(corner_checkpoint, images, method=method)
    assert len(explanations) == 16
    hits = 0
    for explanation, label, corner in zip(explanations, labels.tolist(), corners.tolist()):
        assert explanation.heatmap.shape == (SIDE, SIDE)
        assert explanation.layer == (None if method == "integrated-gradients" else "relu2_2")
        assert explanation.target == explanation.topk[0][0]  # the predicted class is explained
        hits += quadrant(explanation.heatmap) == divmod(corner, 2) and explanation.target == label
    assert hits >= 15, f"{method}: the map peaked in the evidence's corner for only {hits} of 16 images"


def test_explain_writes_a_png_per_image_and_takes_a_layer_and_a_target(corner_checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    from torchvision.io import read_image, write_png

    images, _, _ = corner_images(3, seed=4)
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(images):
        write_png(image, str(folder / f"img{index}.png"))
    out = tmp_path / "maps"
    result = CliRunner().invoke(app, ["explain", str(corner_checkpoint), str(folder), "--output", str(out),
                                      "--method", "gradcam++", "--layer", "conv2_1", "--target", "ring"])
    assert result.exit_code == 0, result.output
    written = sorted(path.name for path in out.iterdir())
    assert written == [f"img{i}.gradcam-pp.png" for i in range(3)]
    picture = read_image(str(out / "img0.gradcam-pp.png"))
    assert picture.shape[0] in (3, 4) and picture.shape[1] > 200 and picture.shape[2] > 600
    assert "img0.png: " in result.stdout and "→" in result.stdout
    maps = cnnctl.explain(corner_checkpoint, folder, layer="conv2_1", target="ring")
    assert {m.layer for m in maps} == {"conv2_1"} and {m.target_name for m in maps} == {"ring"}


@pytest.mark.parametrize(("options", "message"), [
    (["--layer", "conv2_3"], "--layer 'conv2_3': the model has no such module — did you mean conv2_"),
    (["--layer", "fc1"], "--layer 'fc1' does not output a convolutional feature map"),
    (["--method", "integrated-gradients", "--layer", "conv2_1"], "--layer applies to gradcam and gradcam++"),
    (["--method", "gradcamm"], "did you mean gradcam"),
    (["--target", "square"], "--target 'square' is not one of the checkpoint's classes"),
])
def test_bad_options_fail_with_one_line(corner_checkpoint: Path, tmp_path: Path, options: list[str],
                                        message: str) -> None:
    from torchvision.io import write_png

    write_png(corner_images(1, seed=5)[0][0], str(tmp_path / "one.png"))
    result = CliRunner().invoke(app, ["explain", str(corner_checkpoint), str(tmp_path / "one.png"),
                                      "--output", str(tmp_path / "out"), *options])
    assert result.exit_code != 0
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()


def test_a_missing_captum_is_one_line_with_the_pip_command(corner_checkpoint: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "captum", None)
    with pytest.raises(UsageError, match=r"pip install 'cnnctl\[explain\]'"):
        cnnctl.explain(corner_checkpoint, torch.zeros(1, 1, SIDE, SIDE, dtype=torch.uint8))
