"""The search itself, on Optuna: one study in a storage, trials that are ordinary cnnctl runs, workers.

A search folder ``OUT/tune-NAME/`` holds ``tune.json`` (the search: base train options, space, budget,
objective, storage), ``optuna.db`` (the default storage) and one run folder per trial, ``trial-K/1``. The same
document is kept in the study itself (a user attribute), so a process on another machine that joins the study
through a shared ``--storage`` runs the same search. Every process — the first, ``--workers`` started beside
it, ``--resume`` after Ctrl-C, another machine — runs the same loop: take the next trial from Optuna while the
study has fewer than ``trials`` counted trials, train it, report each epoch's ``--monitor`` value, stop it
when the pruner says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.engine.configure import check_config
from cnnctl.engine.distributed import cpu_count, worker_program
from cnnctl.engine.fit import Trainer
from cnnctl.engine.interrupt import TrainingInterrupted
from cnnctl.engine.run_folder import default_run_name
from cnnctl.errors import CheckpointError, CnnctlError, DataError, UsageError
from cnnctl.fsutil import atomic_write_text
from cnnctl.recipe.config_file import build_train_config
from cnnctl.recipe.options import MACHINE_OPTIONS
from cnnctl.recipe.resume import STATE_FILE
from cnnctl.registry import get_model_spec, suggest
from cnnctl.tune.report import trial_line
from cnnctl.tune.space import Param, _render, apply_params, space_from_document, space_to_document
from cnnctl.tune.storage import default_url, open_storage, server_lock, shown_url
from cnnctl.tune.trainer import PruningCallback, TrialReporter

if TYPE_CHECKING:
    import optuna

SPEC_FILE = "tune.json"
STUDY_ATTR = "cnnctl_search"
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = {"val_acc": "maximize", "val_loss": "minimize", "val_map": "maximize"}  # val_map: multi-label


@dataclass
class SearchSpec:
    """What a search is: saved as tune.json and in the study, read back by --resume and by every worker."""

    study_name: str
    options: dict[str, Any]  # the train options given (command line and --config), before any searched value
    space: dict[str, str]  # option name -> SPEC
    trials: int
    monitor: str = "val_acc"
    pruner: str = "median"
    pruner_startup: int = 2
    seed: int = 0
    storage: str | None = None  # None: optuna.db in the search folder; else the URL without its password

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.monitor]

    def params(self) -> list[Param]:
        return space_from_document(self.space)

    def same_search(self, other: SearchSpec) -> bool:
        """Whether ``other`` searches the same thing: the budget, the storage URL and where each machine keeps
        its files and trains (MACHINE_OPTIONS) may differ."""
        mine, theirs = asdict(self), asdict(other)
        for document in (mine, theirs):
            for key in ("trials", "storage"):
                document.pop(key)
            for key in MACHINE_OPTIONS:
                document["options"].pop(key, None)
        return mine == theirs


@dataclass
class Search:
    """An open search: its folder, spec, storage URL and Optuna study."""

    tune_dir: Path
    spec: SearchSpec
    url: str
    study: optuna.Study


@dataclass
class WorkSummary:
    """What one process did: the trial numbers it ran, and whether it was interrupted."""

    ran: list[int] = field(default_factory=list)
    interrupted: CnnctlError | None = None


# ------------------------------------------------------------------------------------------------ setting up
def check_spec(spec: SearchSpec) -> None:
    """Everything about a search that is wrong without training anything: one line each."""
    if spec.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {spec.trials}")
    if spec.pruner not in PRUNERS:
        raise suggest(spec.pruner, list(PRUNERS), "--pruner")
    if spec.pruner_startup < 0:
        raise UsageError(f"--pruner-startup must be >= 0, got {spec.pruner_startup}")
    if spec.monitor not in DIRECTIONS:
        raise suggest(spec.monitor, list(DIRECTIONS), "--monitor")
    if spec.options.get("val_split") == 0:
        raise UsageError("a search needs a validation split: its objective is --monitor on it (the test set "
                         "never chooses)", hint="leave out --val-split 0")
    base = build_train_config(spec.options, source="the command line")
    check_config(base)
    for param in spec.params():  # each edge of each range with the other options as given
        for value in param.extremes():
            try:
                check_config(build_train_config(apply_params(spec.options, {param.name: value}),
                                                source="the command line"))
            except UsageError as error:
                raise UsageError(f"--param {param.name}={param.spec}: {_render(value)} cannot be trained "
                                 f"({error.message})", hint=error.hint) from None


def new_spec(options: dict[str, Any], space: list[Param], *, trials: int | None = None, pruner: str = "median",
             pruner_startup: int = 2) -> tuple[SearchSpec, str, bool]:
    """A new search over ``space`` from train ``options`` (already converted to their types). Also returns the
    folder that holds searches (``out``) and whether a ``name`` was given (else ``ARCH-DATASET``, numbered)."""
    options = dict(options)
    if options.get("task") == "multilabel" and "monitor" not in options:  # mean average precision: threshold-free
        options["monitor"] = "val_map"
    if not options.get("arch"):
        raise UsageError("name an architecture to search with", hint="e.g. cnnctl tune lenet5 --param lr=...")
    name = options.pop("name", None)
    study_name = name or default_run_name(get_model_spec(str(options["arch"])).name.replace(":", "-"),
                                          str(options.get("dataset", "mnist")), options.get("data_dir"))
    spec = SearchSpec(study_name=study_name, options=options, space=space_to_document(space),
                      trials=20 if trials is None else trials, monitor=str(options.get("monitor", "val_acc")),
                      pruner=pruner, pruner_startup=pruner_startup, seed=int(options.get("seed", 0)))
    return spec, str(options.get("out", "runs")), name is not None


def make_study(spec: SearchSpec, url: str, *, create: bool, sampler_seed: int | None = None) -> optuna.Study:
    """The study in ``url`` (created if ``create``). ``sampler_seed`` seeds TPE: a search that one process runs
    from start to end draws the same values again with the same --seed; every other process (workers, other
    machines, --resume) draws its own, or they would all try the same values."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # cnnctl says what happens, in its own lines
    storage = open_storage(url)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    pruner = make_pruner(spec)
    if create:
        study = optuna.create_study(storage=storage, study_name=spec.study_name, direction=spec.direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    else:
        try:
            study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise CnnctlError(f"the storage {_shown(url)} has no study {spec.study_name!r}") from None
    saved = study.user_attrs.get(STUDY_ATTR)
    if saved is None:
        study.set_user_attr(STUDY_ATTR, asdict(spec))
    else:
        theirs = SearchSpec(**saved)
        if not spec.same_search(theirs):
            raise UsageError(f"the study {spec.study_name!r} in {_shown(url)} is another search (other options, "
                             "space, objective or pruner)",
                             hint="pick another --name, or run the same command as the processes already in it")
        if spec.trials != theirs.trials:
            study.set_user_attr(STUDY_ATTR, asdict(spec))
    return study


def make_pruner(spec: SearchSpec) -> Any:
    """``median``: stop a trial whose epoch-e value is worse than the median of earlier trials at epoch e, once
    ``pruner_startup`` trials have finished; ``hyperband``: Optuna's Hyperband over 1..epochs; ``none``."""
    import optuna

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup, n_warmup_steps=0)
    if spec.pruner == "hyperband":
        epochs = int(spec.options.get("epochs", 10))
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def _shown(url: str) -> str:
    return shown_url(url)


def create_tune_dir(out: str | Path, name: str, *, numbered: bool) -> Path:
    """``OUT/tune-NAME`` created exclusively; with ``numbered`` (the name was not chosen) the next free
    ``tune-NAME-2``, ``-3``...; otherwise an existing folder is an error that says how to continue it."""
    parent = Path(out)
    parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        candidate = parent / (f"tune-{name}" if number == 1 else f"tune-{name}-{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            if not numbered:
                raise UsageError(f"{candidate} already holds a search",
                                 hint=f"continue it with `cnnctl tune --resume {candidate}`, or pick another "
                                      "--name") from None
            number += 1


def start_search(spec: SearchSpec, *, out: str | Path, name_given: bool, storage_url: str | None) -> Search:
    """A new search (or, with a shared ``--storage``, joining the study of that name): checks the spec, opens the
    storage, creates the folder and the study, writes tune.json. Nothing is trained yet."""
    check_spec(spec)
    if storage_url is not None:
        open_storage(storage_url)  # unreachable: one line before any folder is made
        spec.storage = shown_url(storage_url)
        tune_dir = Path(out) / f"tune-{spec.study_name}"
        _check_same_storage(tune_dir, spec)
        tune_dir.mkdir(parents=True, exist_ok=True)  # another process of this study may have made it
    else:
        tune_dir = create_tune_dir(out, spec.study_name, numbered=not name_given)
        spec.study_name = tune_dir.name.removeprefix("tune-")
    url = storage_url or default_url(tune_dir)
    study = make_study(spec, url, create=True, sampler_seed=spec.seed if storage_url is None else None)
    write_spec(tune_dir, spec)
    return Search(tune_dir, spec, url, study)


def _check_same_storage(tune_dir: Path, spec: SearchSpec) -> None:
    """A folder of a shared study is joined, never one that holds another search (say, its own optuna.db)."""
    path = tune_dir / SPEC_FILE
    if not path.is_file():
        return
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        found = {}
    if found.get("storage") != spec.storage or found.get("study_name") != spec.study_name:
        raise UsageError(f"{tune_dir} holds another search (storage {found.get('storage') or 'its own optuna.db'})",
                         hint="pick another --name or --out")


def open_search(tune_dir: str | Path, *, storage_url: str | None = None, trials: int | None = None) -> Search:
    """An existing search folder (``--resume DIR``), with its storage; ``trials`` may raise the budget."""
    tune_dir = Path(tune_dir)
    path = tune_dir / SPEC_FILE
    if not path.is_file():
        raise UsageError(f"--resume {tune_dir}: no {SPEC_FILE} there, so it is not a cnnctl tune folder",
                         hint="pass the folder `cnnctl tune` printed, e.g. runs/tune-lenet5-mnist")
    try:
        spec = SearchSpec(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise CnnctlError(f"{path}: not a readable search description ({error})") from None
    if storage_url is None and spec.storage is not None:
        if "***" in spec.storage:
            raise UsageError(f"{tune_dir} uses the storage {spec.storage}, whose password is not saved",
                             hint="pass --storage URL (or set CNNCTL_TUNE_STORAGE) again")
        storage_url = spec.storage
    if trials is not None:
        if trials < 1:
            raise UsageError(f"--trials must be at least 1, got {trials}")
        spec.trials = trials
    url = storage_url or default_url(tune_dir)
    study = make_study(spec, url, create=False)
    write_spec(tune_dir, spec)
    return Search(tune_dir, spec, url, study)


def show_search(url: str, name: str, out: str | Path) -> Search:
    """The study ``name`` in the storage ``url``, read only and without a folder: its table on any machine
    (``cnnctl tune --storage URL --name NAME``). ``out`` only names where its search folders would be."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise UsageError(f"the storage {_shown(url)} has no study {name!r}",
                         hint=f"its studies: {', '.join(names)}" if names else "it holds no study yet") from None
    saved = study.user_attrs.get(STUDY_ATTR)
    if saved is None:
        raise UsageError(f"the study {name!r} in {_shown(url)} was not made by cnnctl tune")
    return Search(Path(out) / f"tune-{name}", SearchSpec(**saved), url, study)


def write_spec(tune_dir: Path, spec: SearchSpec) -> None:
    atomic_write_text(tune_dir / SPEC_FILE, json.dumps(asdict(spec), indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------------ the budget
def counted_trials(study: optuna.Study) -> int:
    """Trials that use up the budget: finished (complete, pruned, or failed with an error of their own) and
    running. An interrupted trial, or one whose process died, is run again."""
    from optuna.trial import TrialState

    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.FAIL:
            count += "error" in trial.user_attrs
        else:
            count += 1
    return count


def waiting_trials(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


@contextlib.contextmanager
def budget_lock(search: Search) -> Iterator[Any]:
    """Held from counting the study's trials until the next trial exists, so that processes sharing the study
    never start one trial more than the budget: a lock file in the search folder (processes on this machine,
    ``--workers``) and, on a PostgreSQL storage, an advisory lock in the database (every machine). Yields
    ``release``."""
    with contextlib.ExitStack() as stack:
        server_release = stack.enter_context(server_lock(search.url, search.spec.study_name))
        file_release = stack.enter_context(_folder_lock(search.tune_dir))

        def release() -> None:
            file_release()
            server_release()

        yield release


@contextlib.contextmanager
def _folder_lock(tune_dir: Path) -> Iterator[Any]:
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): the count alone decides
        yield lambda: None
        return
    handle = open(tune_dir / ".budget.lock", "a+")  # noqa: SIM115 - held across the block
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)

    def release() -> None:
        if not handle.closed:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    try:
        yield release
    finally:
        release()


def continue_interrupted(search: Search) -> list[int]:
    """Queue each interrupted trial again with its parameters (and each whose process died after saving an
    epoch); the new trial continues the old trial's run folder (``cnnctl train --resume``) instead of training
    from scratch. Returns the old trial numbers."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(search.study)  # trials of dead processes, past the heartbeat's grace
    trials = search.study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("continues_trial") for t in trials}
    queued = []
    for trial in trials:
        # interrupted (Ctrl-C), or whose process died (failed by the heartbeat check, no error of its own)
        run_dir = trial.user_attrs.get("interrupted") or trial.user_attrs.get("run_dir")
        if (trial.state != TrialState.FAIL or "error" in trial.user_attrs or trial.number in taken or not run_dir
                or not (Path(run_dir) / STATE_FILE).is_file()):
            continue
        search.study.enqueue_trial(trial.params, user_attrs={"continues": run_dir, "continues_trial": trial.number})
        queued.append(trial.number)
    return queued


# ------------------------------------------------------------------------------------------------ a trial
class TrialFailed(Exception):
    """A trial's training failed with one of cnnctl's errors; Optuna records it as FAIL and the search goes on."""


def run_trial(search: Search, trial: optuna.Trial, *, quiet: bool) -> float:
    """Optuna's objective: train one trial's run folder and return its best ``--monitor`` value (validation,
    never test); raise ``optuna.TrialPruned`` when the pruner stopped it."""
    import optuna

    spec = search.spec
    values = {param.name: param.suggest(trial) for param in spec.params()}
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    continues = trial.user_attrs.get("continues")
    callback = PruningCallback(trial, spec.monitor, spec.pruner)
    reporter = TrialReporter(trial.number, values, quiet=quiet)
    try:
        if continues:
            trainer = Trainer.resuming(continues, {}, reporter, callbacks=[callback])
        else:  # the run folder is the run group trial-K's first run: tune-NAME/trial-K/1
            options = {**apply_params(spec.options, values), "out": str(search.tune_dir),
                       "name": f"trial-{trial.number}"}
            trainer = Trainer(build_train_config(options, source=f"trial {trial.number}"), reporter,
                              callbacks=[callback])
        started = time.monotonic()
        result = trainer.run()
    except (TrainingInterrupted, KeyboardInterrupt):
        run_dir = callback.run_dir
        if run_dir is not None and (run_dir / STATE_FILE).is_file():  # resumable: --resume continues it
            trial.set_user_attr("interrupted", str(run_dir))
            write_trial_file(run_dir, trial.number, "interrupted", values, callback)
            print(f"trial {trial.number} interrupted after {len(callback.reported)} epoch(s); its run is saved in "
                  f"{run_dir}", file=sys.stderr, flush=True)
        raise
    except (DataError, CheckpointError):
        raise  # the data or --pretrained weights, not this trial's values: every trial would fail the same way
    except CnnctlError as error:
        trial.set_user_attr("error", str(error))
        run_dir = callback.run_dir
        if run_dir is not None:
            write_trial_file(run_dir, trial.number, "failed", values, callback, error=str(error))
        raise TrialFailed(str(error)) from error
    run_dir = result.run_dir
    trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
    trial.set_user_attr("config", trainer.config.to_dict())
    trial.set_user_attr("epochs_trained", len(result.history))
    value = callback.best_value(result.history)
    if callback.pruned_at is not None:
        trial.set_user_attr("pruned_at_epoch", callback.pruned_at)
        write_trial_file(run_dir, trial.number, "pruned", values, callback, value=value)
        raise optuna.TrialPruned(f"pruned by the {spec.pruner} pruner after epoch {callback.pruned_at}")
    write_trial_file(run_dir, trial.number, "complete", values, callback, value=value)
    return value


def write_trial_file(run_dir: Path, number: int, state: str, values: dict[str, Any], callback: Any, *,
                     value: float | None = None, error: str | None = None) -> None:
    """``trial.json`` in the trial's run folder: its number, state (complete, pruned, failed, interrupted),
    parameters and objective value, so that the folder says what it was without the study."""
    document: dict[str, Any] = {"trial": number, "state": state, "params": values, "monitor": callback.monitor,
                                "value": value, "epochs_reported": callback.reported}
    if callback.pruned_at is not None:
        document["pruned_at_epoch"] = callback.pruned_at
        document["pruned_by"] = callback.pruner
    if error:
        document["error"] = error
    atomic_write_text(run_dir / "trial.json", json.dumps(document, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ the loop
def work(search: Search, *, timeout: float | None = None, quiet: bool = False) -> WorkSummary:
    """Run trials until the study holds ``trials`` counted ones, or ``timeout`` seconds have passed (the trial
    running then finishes). Ctrl-C stops the current trial after its batch, saved and resumable."""
    import optuna

    summary = WorkSummary()
    deadline = None if timeout is None else time.monotonic() + timeout
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's end is said by announce(), in one line

    def announce(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        summary.ran.append(trial.number)
        print(trial_line(trial, search.spec.monitor), file=sys.stderr, flush=True)

    while deadline is None or time.monotonic() < deadline:
        with budget_lock(search) as release:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(search.study)
            if counted_trials(search.study) >= search.spec.trials and not waiting_trials(search.study):
                break  # a waiting trial (a continuation queued by --resume) is in the budget already: it runs

            def objective(trial: optuna.Trial, release: Any = release) -> float:
                release()  # the trial exists: other processes may count it now
                return run_trial(search, trial, quiet=quiet)

            try:
                search.study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[announce],
                                      gc_after_trial=True)
            except TrainingInterrupted as error:
                summary.interrupted = error
                break
            except KeyboardInterrupt:  # between two trials, or before training started
                summary.interrupted = TrainingInterrupted("interrupted", exit_code=130)
                break
    return summary


# ------------------------------------------------------------------------------------------------ workers
def run_workers(search: Search, workers: int, *, timeout: float | None, quiet: bool, debug: bool,
                storage_url: str | None) -> int:
    """``--workers N``: N processes on this machine, each ``cnnctl tune --resume DIR --worker``, sharing the study
    and the CPU cores (``OMP_NUM_THREADS`` = cores / N unless set, as ``--nproc`` does). Ctrl-C here reaches
    each of them once: every worker saves its trial and stops. Returns the highest exit code."""
    import signal
    import subprocess

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // workers)))
    if storage_url is not None:
        env["CNNCTL_TUNE_STORAGE"] = storage_url  # not on the command line, where `ps` would show a password
    if debug:
        env["CNNCTL_DEBUG"] = "1"
    command = [sys.executable, *worker_program(), "tune", "--resume", str(search.tune_dir), "--worker"]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    if quiet:
        command.append("--quiet")
    # Each worker in its own process group: a Ctrl-C on the terminal reaches this process only, which passes it
    # on once (a second Ctrl-C is passed on too, and stops the workers at once).
    processes = [subprocess.Popen(command, env=env, start_new_session=True) for _ in range(workers)]

    def forward(signum: int, frame: Any) -> None:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [process.wait() for process in processes]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = [128 - code if code < 0 else code for code in codes]  # killed by signal N: 128 + N, as a shell says
    return max(codes)
