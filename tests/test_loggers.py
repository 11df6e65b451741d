"""--logger tensorboard and mlflow, read back by their own readers (TensorBoard's EventAccumulator, MLflow's
client): the numbers equal metrics.csv, a run that crashed and was resumed has each step and epoch once, and
nothing tries the network. A missing library or an unknown name is one line before any work."""

from __future__ import annotations

import csv
import ipaddress
import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.engine.callbacks import Callback

OPTIONS = {"arch": "simplecnn", "dataset": "microdigits", "batch_size": 16, "lr": 0.01, "threads": 1,
           "scheduler": "none", "deterministic": True}
STEPS = 5  # 80 training images in batches of 16


class CrashAt(Callback):
    """Raises in epoch ``epoch`` after step ``step``: a crash after the loggers logged that step, past the saved
    state (the end of the previous epoch)."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step, self.current = epoch, step, 0

    def on_epoch_start(self, trainer, epoch) -> None:
        self.current = epoch

    def on_train_batch_end(self, trainer, step, loss) -> None:
        if (self.current, step) == (self.epoch, self.step):
            raise RuntimeError("simulated crash")


def metrics_csv(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


@pytest.fixture()
def no_remote_connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records every socket connection to an address other than this machine's."""
    remote: list[object] = []
    connect = socket.socket.connect

    def is_loopback(host: str) -> bool:
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name
            return False

    def guarded(self, address):  # noqa: ANN001
        if isinstance(address, tuple) and not is_loopback(address[0]):  # (AF_UNIX paths are local)
            remote.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return remote


def test_crash_resume_and_finish_logged_once_to_tensorboard_and_mlflow(
        micro_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_remote_connections: list[object]) -> None:
    import gc

    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from cnnctl.engine.state import read_state

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="simulated crash"):
        cnnctl.train(epochs=3, out=str(out), logger="tensorboard, mlflow", callbacks=[CrashAt(2, 3)], **OPTIONS)
    gc.collect()  # the crashed run's TensorBoard writer is closed, as at the end of its process
    run_dir = out / "simplecnn-microdigits" / "1"
    assert read_state(run_dir).state.epoch == 1
    result = cnnctl.train(resume=run_dir)
    history = metrics_csv(run_dir)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    results = json.loads((run_dir / "results.json").read_text())

    # TensorBoard: every step once, the epoch rows equal metrics.csv, the test images and the hparams
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0,
                                                                           "tensors": 0})
    events.Reload()
    step_losses = events.Scalars("step/train_loss")
    assert [event.step for event in step_losses] == list(range(1, 3 * STEPS + 1))
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        logged = events.Scalars(f"epoch/{column}")
        assert [event.step for event in logged] == [STEPS, 2 * STEPS, 3 * STEPS]
        assert [event.value for event in logged] == pytest.approx([row[column] for row in history], rel=1e-6)
    for epoch, row in enumerate(history):  # equal batches: the epoch's loss is the mean of its step losses
        losses = [event.value for event in step_losses[epoch * STEPS:(epoch + 1) * STEPS]]
        assert sum(losses) / STEPS == pytest.approx(row["train_loss"], rel=1e-5)
    assert events.Scalars("test/acc")[0].value == pytest.approx(results["test_acc"])
    for tag, png in (("test/confusion_matrix", "confusion.png"), ("test/predictions", "predictions.png")):
        from matplotlib.image import imread

        image = events.Images(tag)[0]
        assert (image.height, image.width) == imread(run_dir / png).shape[:2]
    start = HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(0.01)
    assert start.hparams["arch"].string_value == "simplecnn"
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    restarts = [event.step for path in sorted((run_dir / "tensorboard").iterdir())
                for event in EventFileLoader(str(path)).Load() if event.HasField("session_log")]
    assert restarts == [STEPS + 1]  # the resumed writer purges what the crashed one logged after the state

    # MLflow: one run, finished, params, each epoch once and equal to metrics.csv, the run folder as artifacts
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("simplecnn-microdigits")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "simplecnn-microdigits/1"
    assert read_state(run_dir).state.extra["callbacks"]["cnnctl.engine.callbacks.mlflow.MlflowLogger"][
        "run_id"] == run.info.run_id
    assert run.data.params["lr"] == "0.01" and run.data.params["epochs"] == "3"
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s"):
        metric = client.get_metric_history(run.info.run_id, column)
        assert [(m.step, m.value) for m in metric] == [(int(row["epoch"]), pytest.approx(row[column]))
                                                        for row in history]
    assert run.data.metrics["test_acc"] == pytest.approx(results["test_acc"]) == pytest.approx(result.test["test_acc"])
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"best.safetensors", "last.safetensors", "metrics.csv", "results.json", "config.yaml",
            "confusion.png", "tensorboard"} <= artifacts
    assert "state.safetensors" not in artifacts and ".lock" not in artifacts
    assert not no_remote_connections


def test_missing_library_or_unknown_logger_is_one_line_before_any_work(micro_digits, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    out = tmp_path / "runs"
    args = ["train", "simplecnn", "--dataset", "microdigits", "--epochs", "1", "--out", str(out)]
    missing = CliRunner().invoke(app, [*args, "--logger", "tensorboard,mlflow"])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == ("error: --logger mlflow needs mlflow, which is not installed — "
                                      "pip install 'cnnctl[mlflow]'")
    unknown = CliRunner().invoke(app, [*args, "--logger", "tensorbord"])
    assert unknown.exit_code == 2 and "did you mean tensorboard?" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing started
    with pytest.raises(cnnctl.CnnctlError, match="pip install 'cnnctl\\[mlflow\\]'"):
        cnnctl.train(epochs=1, out=str(out), logger=["mlflow"], **OPTIONS)


def test_logger_choices_come_from_the_registry() -> None:
    from cnnctl.recipe.loggers import loggers
    from cnnctl.recipe.options import OPTION_BY_NAME, coerce

    assert {"tensorboard", "mlflow"} <= set(loggers())
    assert coerce(OPTION_BY_NAME["logger"], " mlflow,,tensorboard,mlflow ") == "mlflow,tensorboard"
    assert coerce(OPTION_BY_NAME["logger"], ["tensorboard"]) == "tensorboard"
    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--logger NAME[,...]" in help_text and "one of: tensorboard, mlflow" in help_text


def test_the_documented_logger_registers_itself_and_runs(micro_digits, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from cnnctl.recipe import loggers

    block = re.search(r"^```py\n(.*?)^```$", (Path(__file__).parent.parent / "docs" / "tracking.md").read_text(),
                      re.DOTALL | re.MULTILINE).group(1)
    try:
        exec(compile(block, "docs/tracking.md", "exec"), {})
        assert "print" in loggers.logger_names()
        result = cnnctl.train(epochs=2, out=str(tmp_path), logger="print", plots=False, **OPTIONS)
        printed = capsys.readouterr().out.splitlines()
        assert printed == [f"epoch {int(row['epoch'])}: {row['val_acc']:.2%}" for row in result.history]
    finally:
        loggers._LOGGERS.pop("print", None)
