"""``--logger mlflow`` against a real ``mlflow server`` on 127.0.0.1 (tests/services.py), read back with MLflow's own
client: params, per-epoch metrics, checkpoints and plots as artifacts, a resume in the same MLflow run, a server
that goes away mid-training (the training goes on) and one that does not answer at the start (one line)."""

from __future__ import annotations

import csv
import time
import uuid
from pathlib import Path

import pytest
from real_mnist import write_mnist_folder
from services import TcpProxy, free_port
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.engine.callbacks import Callback
from cnnctl.progress import Reporter

EXPERIMENT = f"scaleout-{uuid.uuid4().hex[:8]}"  # a server given by CNNCTL_TEST_MLFLOW_URI may be reused
OPTIONS = {"arch": "lenet5", "val_split": 40, "batch_size": 20, "threads": 1, "device": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 training images of the real digits 0-3 (40 held out for validation), 40 test images."""
    return write_mnist_folder(tmp_path_factory.mktemp("digits"), train_per_class=40, test_per_class=10)


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_run_and_its_resume_are_one_mlflow_run_on_the_server(mlflow_tracking, digits: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    out = tmp_path / "runs"
    first = cnnctl.train(data=str(digits), epochs=1, out=str(out), logger="mlflow", **OPTIONS)
    run_dir = first.run_dir
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()  # all of it went to the server
    client = MlflowClient(tracking_uri=mlflow_tracking.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"

    cnnctl.train(resume=run_dir, epochs=2)  # continues the same MLflow run
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == f"{run_dir.parent.name}/1"
    assert run.data.params["arch"] == "lenet5" and run.data.params["batch_size"] == "20"
    assert run.data.params["epochs"] == "1" and run.data.tags["resumed.epochs"] == "2"
    rows = history(run_dir)
    for column in ("train_loss", "val_loss", "val_acc", "lr"):
        logged = client.get_metric_history(run.info.run_id, column)
        assert [(m.step, m.value) for m in logged] == [(int(row["epoch"]), pytest.approx(float(row[column])))
                                                        for row in rows]
    said = capfd.readouterr()
    assert "View run" not in said.out and f"View run {run.info.run_name} at: {mlflow_tracking.uri}" in said.err
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"best.safetensors", "last.safetensors", "metrics.csv", "results.json", "config.yaml", "confusion.png",
            "curves.png"} <= artifacts, artifacts
    assert "state.safetensors" not in artifacts
    # what the server stores is the run folder's checkpoint, byte for byte
    downloaded = client.download_artifacts(run.info.run_id, "best.safetensors", str(tmp_path))
    assert Path(downloaded).read_bytes() == (run_dir / "best.safetensors").read_bytes()


class GoAway(Callback):
    """Cuts the tracking server off after epoch 1 (after the MLflow logger logged it)."""

    def __init__(self, proxy: TcpProxy):
        self.proxy = proxy

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        if epoch == 1:
            self.proxy.close()


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_a_server_that_goes_away_costs_the_log_not_the_training(mlflow_tracking, digits: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    proxy = TcpProxy(int(mlflow_tracking.uri.rsplit(":", 1)[1]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT + "-gone")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # cnnctl's default (1) waits 1+2+4 s once
    started = time.monotonic()
    reporter = Messages()
    result = cnnctl.train(data=str(digits), epochs=3, out=str(tmp_path / "runs"), logger="mlflow", plots=False,
                          callbacks=[GoAway(proxy)], reporter=reporter, **OPTIONS)
    seconds = time.monotonic() - started
    warnings = [line for line in reporter.lines if "mlflow" in line]
    assert len(warnings) == 1 and "stopped answering at epoch 2" in warnings[0], warnings
    assert f"training goes on without MLflow, and {result.run_dir} keeps everything" in warnings[0]
    assert [row["epoch"] for row in history(result.run_dir)] == ["1", "2", "3"]  # the training went on
    assert (result.run_dir / "results.json").is_file() and (result.run_dir / "best.safetensors").is_file()
    client = MlflowClient(tracking_uri=mlflow_tracking.uri)  # the server itself is still there
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT + "-gone").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1]
    assert seconds < 60, seconds  # retries give up within seconds, once
    print(f"training with the server gone after epoch 1: {seconds:.1f} s")


def test_a_server_that_does_not_answer_at_the_start_is_one_line(digits: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["train", "lenet5", "--data", str(digits), "--epochs", "1", "--out", str(out),
                                      "--logger", "mlflow", "--threads", "1"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: mlflow: the tracking server http://127.0.0.1:{port} does not answer "
                                     "([Errno 111] Connection refused) — start it, fix MLFLOW_TRACKING_URI, or "
                                     "train without --logger mlflow")
    assert not out.exists()  # before any work
