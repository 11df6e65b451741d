"""The default memory format on a CPU is measured, once per machine, model and batch shape, and kept in a cache
file; the probe leaves the model's weights, its BatchNorm statistics and torch's random state as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnctl.engine import components
from cnnctl.models import build_model

CPU = torch.device("cpu")


def test_the_probe_measures_once_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = build_model("lenet5", num_classes=10, in_channels=1, batch_norm=True, dropout=0.5)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    timed: list[tuple[float, float]] = []
    probe = components._probe
    monkeypatch.setattr(components, "_probe", lambda *a: timed.append(probe(*a)) or timed[-1])

    chosen = components.choose_channels_last(model, (1, 32, 32), 16, CPU)
    assert len(timed) == 1 and all(seconds > 0 for seconds in timed[0])
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    cached = json.loads((tmp_path / "cnnctl" / components.FORMAT_CACHE).read_text())
    (entry,) = cached.values()
    contiguous, channels_last = timed[0]
    assert entry == {"channels_last": chosen, "speedup": round(contiguous / channels_last, 3)}
    assert chosen == (contiguous / channels_last > components.PROBE_MARGIN)  # BatchNorm: the rule says contiguous

    # the same model and shape again: read from the file, not measured
    assert components.choose_channels_last(model, (1, 32, 32), 16, CPU) is chosen and len(timed) == 1
    components.choose_channels_last(model, (1, 32, 32), 8, CPU)  # another batch shape is measured
    assert len(timed) == 2 and len(json.loads((tmp_path / "cnnctl" / components.FORMAT_CACHE).read_text())) == 2


def test_without_a_measurement_the_rule_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    plain = build_model("lenet5", num_classes=10, in_channels=1)
    with_bn = build_model("lenet5", num_classes=10, in_channels=1, batch_norm=True)
    # a GPU: not measured here; BatchNorm networks contiguous, the others channels-last
    assert components.choose_channels_last(plain, (1, 32, 32), 16, torch.device("cuda")) is True
    assert components.choose_channels_last(with_bn, (1, 32, 32), 16, torch.device("cuda")) is False
    # a probe that fails (here: three channels into a one-channel network) leaves it to the rule, caches nothing
    assert components.choose_channels_last(with_bn, (3, 32, 32), 4, CPU) is False
    assert components.choose_channels_last(plain, (3, 32, 32), 4, CPU) is True
    assert not (tmp_path / "cnnctl" / components.FORMAT_CACHE).exists()
