"""``--logger mlflow``: the run as an MLflow run — its configuration as params, each metrics.csv row as metrics
(step = epoch), the final test, and at the end the run folder's files as artifacts.

Where: ``$MLFLOW_TRACKING_URI`` when set (a shared server), else a local SQLite store beside the run folders,
``OUT/mlflow.db`` with artifacts in ``OUT/mlartifacts/`` (MLflow's recommended local backend; no server, nothing
leaves the machine: ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` shows it); a resumed run keeps
the store it started in. The experiment is the run group (``lenet5-mnist``) unless ``$MLFLOW_EXPERIMENT_NAME``
says otherwise.

A resumed cnnctl run continues the same MLflow run: its id is in this callback's state (saved with the training
state), and epochs the store does not have yet are logged from the history first, so each epoch is there once.
A run that ends without finishing (Ctrl-C, an error) is marked KILLED when the process exits. Rank 0 alone logs.

A tracking server that does not answer when the run starts is one line before any work (the run would be
missing from the tracker, and fixing that costs nothing yet). One that goes away during training costs the log,
never the training: one warning, and the run goes on without MLflow (everything stays in the run folder; a later
``--resume`` of an unfinished run logs the epochs the server missed). Requests to a server give up after a few
seconds of retries, not MLflow's minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_BACKOFF_FACTOR``/``_TIMEOUT``
override it).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.engine.callbacks.base import Callback
from cnnctl.engine.loggers import logger_builder, run_params
from cnnctl.errors import CnnctlError, first_line

if TYPE_CHECKING:
    from cnnctl.engine.fit import FitResult, Trainer
    from cnnctl.recipe.config import TrainConfig

# the runs this process has open, with their client: marked KILLED at exit unless they finished
_OPEN_RUNS: dict[str, Any] = {}
_BATCH = 100  # MLflow's limit on params per log_batch call


def tracking_uri(out: str | Path, saved: str | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, else the store a resumed run logged to (``saved``), else the local store
    ``OUT/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or saved or f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


# A server that stopped answering: give up after ~7 s (retries after 1, 2, 4 s), not MLflow's default of 7
# retries with a backoff factor of 2 (minutes), during which the training would wait.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def _client(uri: str) -> Any:
    import logging

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow would otherwise report usage online
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # a line per retry; cnnctl says one
    from mlflow import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..."
    return MlflowClient(tracking_uri=uri)


class MlflowLogger(Callback):
    """Logs the run to MLflow (see the module's docstring)."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.uri: str | None = None
        self.client: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:
            return
        uri = tracking_uri(trainer.config.out, self.uri if trainer.resume_dir is not None else None)
        try:
            self._start(trainer, uri)
        except Exception as error:  # noqa: BLE001 - MLflow raises its own and its HTTP library's errors
            raise CnnctlError(f"mlflow: cannot log to {uri} ({first_line(error, 200)})",
                              hint="check MLFLOW_TRACKING_URI, or train without --logger mlflow") from error

    def _start(self, trainer: Trainer, uri: str) -> None:
        config = trainer.config
        self.client = client = _client(uri)
        run = self._resumed_run(trainer, uri)
        if run is None:
            group = trainer.run_dir.parent
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or _relative(group, config.out)
            artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else (
                (Path(config.out).resolve() / "mlartifacts").as_uri())
            experiment = client.get_experiment_by_name(name)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else client.create_experiment(name, artifact_location=artifacts))
            run = client.create_run(experiment_id, run_name=_relative(trainer.run_dir, config.out),
                                    tags={"cnnctl.run_dir": str(trainer.run_dir.resolve()),
                                          "mlflow.source.name": "cnnctl train"})
        self.run_id, self.uri = run.info.run_id, uri
        _OPEN_RUNS[self.run_id] = client
        self._log_params(run, config)
        logged = {metric.step for metric in client.get_metric_history(self.run_id, "train_loss")}
        for row in trainer.history:  # epochs saved before an interruption that the store does not have
            if int(row["epoch"]) not in logged:
                self._log_metrics(row, int(row["epoch"]))

    def _resumed_run(self, trainer: Trainer, uri: str) -> Any:
        """The MLflow run this cnnctl run logged to before it was interrupted, set running again (None for a new
        run, or when that run is not in this store)."""
        if self.run_id is None or trainer.resume_dir is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(self.run_id)
        except MlflowException:
            trainer.reporter.message(f"mlflow: run {self.run_id} is not in {uri}; logging to a new run")
            return None
        self.client.update_run(self.run_id, status="RUNNING")
        return run

    def _log_params(self, run: Any, config: TrainConfig) -> None:
        """The configuration; on a resume only what the run does not have yet (MLflow params cannot change: a
        value that did, such as a larger --epochs, goes into a ``resumed.NAME`` tag)."""
        from mlflow.entities import Param, RunTag

        had = run.data.params
        params = {key: str(value)[:6000] for key, value in run_params(config).items()}
        new = [Param(key, value) for key, value in params.items() if key not in had]
        changed = [RunTag(f"resumed.{key}", value) for key, value in params.items()
                   if key in had and had[key] != value]
        for start in range(0, max(len(new), len(changed)), _BATCH):
            self.client.log_batch(self.run_id, params=new[start:start + _BATCH], tags=changed[start:start + _BATCH])

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.client is not None:
            try:
                self._log_metrics(metrics, epoch)
            except Exception as error:  # noqa: BLE001 - MLflow raises its own and its HTTP library's errors
                self._lost(trainer, f"epoch {epoch}", error)

    def _lost(self, trainer: Trainer, when: str, error: Exception) -> None:
        """The store stopped answering: say so once and go on without it (the run folder has everything)."""
        trainer.reporter.message(
            f"warning: mlflow: {self.uri} stopped answering at {when} ({first_line(error, 160)}); training goes on "
            f"without MLflow, and {trainer.run_dir} keeps everything")
        _OPEN_RUNS.pop(self.run_id or "", None)  # nor wait for it at exit
        self.client = None

    def _log_metrics(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in values.items()
                 if key != "epoch" and isinstance(value, (int, float))]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        if self.client is None:
            return
        try:
            self._finish(trainer, result)
        except Exception as error:  # noqa: BLE001 - as in on_epoch_end
            self._lost(trainer, "the end of the run", error)

    def _finish(self, trainer: Trainer, result: FitResult) -> None:
        if result.test is not None:
            self._log_metrics({k: v for k, v in result.test.items() if k.startswith("test_") or k == "best_epoch"},
                              len(trainer.history))
        for path in sorted(trainer.run_dir.rglob("*")):
            relative = path.relative_to(trainer.run_dir)
            if path.is_file() and path.name != "state.safetensors" and not any(
                    part.startswith(".") for part in relative.parts):
                parent = relative.parent.as_posix()
                self.client.log_artifact(self.run_id, str(path), artifact_path=None if parent == "." else parent)
        with contextlib.redirect_stdout(sys.stderr):  # a server's "View run ... at: URL": stdout holds results
            self.client.set_terminated(self.run_id, "FINISHED")
        _OPEN_RUNS.pop(self.run_id, None)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri} if self.run_id else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id, self.uri = state.get("run_id"), state.get("tracking_uri")


def _relative(path: Path, out: str | Path) -> str:
    try:
        return path.resolve().relative_to(Path(out).resolve()).as_posix()
    except ValueError:
        return path.name


@atexit.register
def _mark_unfinished() -> None:
    """Runs this process started and did not finish (interrupted, or an error) are KILLED, not left RUNNING."""
    for run_id, client in list(_OPEN_RUNS.items()):
        try:
            client.set_terminated(run_id, "KILLED")
        except Exception:  # noqa: BLE001 - at exit, a store that went away cannot be helped
            pass
    _OPEN_RUNS.clear()


@logger_builder("mlflow")
def _mlflow(config: TrainConfig) -> Callback:
    check_server()
    return MlflowLogger()


def check_server() -> None:
    """A tracking server (``MLFLOW_TRACKING_URI=http(s)://...``) that does not answer is one line before any work:
    its host and port must take a connection (MLflow's client would retry for seconds before saying anything).
    Only the process that logs asks (rank 0; every process of ``--nproc`` builds its loggers)."""
    import socket
    from urllib.parse import urlsplit

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")) or os.environ.get("RANK", "0") != "0":
        return
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        if not host:
            raise ValueError("no host in it")
        socket.create_connection((host, port), timeout=10).close()
    except (OSError, ValueError) as error:
        raise CnnctlError(f"mlflow: the tracking server {uri} does not answer ({first_line(error, 200)})",
                          hint="start it, fix MLFLOW_TRACKING_URI, or train without --logger mlflow") from None
