"""timm:NAME architectures: resolved lazily (nothing imported for `list`/`--help`), the tutorial's spellings,
built with timm.create_model, pretrained weights from a local folder laid out like the hub (no internet), their
data config as the checkpoint's preprocessing, and offline use with no socket opened."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dataset_files import write_image_folder
from safetensors.torch import save_file
from typer.testing import CliRunner

from cnnctl.cli import app
from cnnctl.errors import DownloadError, UsageError
from cnnctl.models import build_model
from cnnctl.models.pretrained import load_pretrained
from cnnctl.registry import get_model_spec

runner = CliRunner()
SMALL = "timm:mobilenetv3_small_050"
HUB_ID = "timm/mobilenetv3_small_050.lamb_in1k"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A weights folder as `cnnctl download weights timm:... --dest` writes it: <hf_hub_id>/model.safetensors."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    tensors = {key: value.contiguous() for key, value in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("timm-weights")
    (folder / HUB_ID).mkdir(parents=True)
    save_file(tensors, str(folder / HUB_ID / "model.safetensors"))
    return folder, tensors


def test_names_resolve_lazily_with_the_tutorials_spellings() -> None:
    assert get_model_spec("timm:se_resnext50_32x4d").name == "timm:seresnext50_32x4d"
    assert get_model_spec("timm:tf_efficientnet_b2.ap").name == "timm:tf_efficientnet_b2.ap_in1k"
    assert get_model_spec("timm:xception41").classifier == "head.fc"
    with pytest.raises(UsageError, match="did you mean"):
        get_model_spec("timm:resnet5O")
    probe = ("import sys, cnnctl.registry as r; r.models(); "
             "print('timm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]  # registering the family imports neither


def test_list_source_timm_lists_names_and_weights_tags() -> None:
    result = runner.invoke(app, ["list", "--source", "timm", "xception4*", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row["pretrained"] for row in json.loads(result.stdout)["architectures"]}
    assert rows["timm:xception41"] == ["tf_in1k"] and "timm:xception41p" in rows


@pytest.mark.parametrize("name", ["timm:seresnext50_32x4d", "timm:xception41", "timm:legacy_xception",
                                  "timm:tf_efficientnet_b2.ap"])
def test_tutorial_models_build_and_run(name: str) -> None:
    started = time.perf_counter()
    model = build_model(name, num_classes=2, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 96, 96)).shape == (1, 2)
    print(f"{name}: built and ran in {time.perf_counter() - started:.1f} s")


def test_pretrained_from_a_local_folder_loads_every_tensor_but_the_head(hub_folder: tuple[Path, dict],
                                                                         no_network: list[object]) -> None:
    folder, tensors = hub_folder
    spec = get_model_spec(SMALL)
    config = SimpleNamespace(weights_mirror=str(folder), offline=True)
    model = build_model(SMALL, num_classes=3, in_channels=3)
    report = load_pretrained(model, spec, "imagenet", config=config)
    state = model.state_dict()
    for key, value in tensors.items():
        if not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    assert state["classifier.weight"].shape == (3, 1024) and report.reinitialised == ["classifier.weight",
                                                                                     "classifier.bias"]
    grey = build_model(SMALL, num_classes=3, in_channels=1)
    load_pretrained(grey, spec, "imagenet", config=config)
    torch.testing.assert_close(grey.state_dict()["conv_stem.weight"], tensors["conv_stem.weight"].sum(1, True))
    assert no_network == []


def test_offline_without_the_file_is_one_line_and_opens_no_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  no_network: list[object]) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("CNNCTL_WEIGHTS_MIRROR", raising=False)
    model = build_model(SMALL, num_classes=3, in_channels=3)
    with pytest.raises(DownloadError) as raised:
        load_pretrained(model, get_model_spec(SMALL), "imagenet", config=SimpleNamespace(weights_mirror=None,
                                                                                        offline=True))
    assert f"{HUB_ID}/model.safetensors" in str(raised.value) and "--offline" in str(raised.value)
    assert "\n" not in str(raised.value) and no_network == []


def test_train_and_eval_on_a_folder_with_the_models_data_config(hub_folder: tuple[Path, dict], tmp_path: Path,
                                                                no_network: list[object]) -> None:
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    import cnnctl

    folder, _ = hub_folder
    data = tmp_path / "images"
    write_image_folder(data, ("a", "b"), 6, size=24)
    run = runner.invoke(app, ["train", SMALL, "--data", str(data), "--pretrained", "imagenet", "--offline",
                              "--weights-mirror", str(folder), "--epochs", "1", "--batch-size", "5",
                              "--img-size", "64", "--threads", "1", "--no-plots", "--out", str(tmp_path / "runs")])
    assert run.exit_code == 0, run.output
    best = next((tmp_path / "runs").glob("*/1/best.safetensors"))
    _, prep = cnnctl.load(best)
    config = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg("mobilenetv3_small_050").to_dict())
    assert prep.mean == tuple(config["mean"]) and prep.std == tuple(config["std"])
    assert prep.interpolation == config["interpolation"] == "bicubic"
    assert (prep.image_size, prep.resize) == ((64, 64), 73)  # 224/0.875 = 256 for 224, scaled to --img-size 64
    assert prep.extra["weights"] == HUB_ID
    evaluated = runner.invoke(app, ["eval", str(best), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert no_network == []


def test_download_weights_dest_copies_the_hub_layout(hub_folder: tuple[Path, dict], tmp_path: Path,
                                                     no_network: list[object]) -> None:
    folder, _ = hub_folder
    dest = tmp_path / "carry"
    result = runner.invoke(app, ["download", "weights", SMALL, "--weights-mirror", str(folder), "--dest", str(dest),
                                 "--offline"])
    assert result.exit_code == 0, result.output
    copied = dest / HUB_ID / "model.safetensors"
    assert copied.read_bytes() == (folder / HUB_ID / "model.safetensors").read_bytes()
    assert no_network == []
