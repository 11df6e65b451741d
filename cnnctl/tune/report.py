"""The end of a search: a row per trial (params, value, state, time), the best trial's config.yaml, the JSON
summary, and Optuna's own plots (matplotlib backend): importance.png and history.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import plots
from cnnctl.fsutil import atomic_path, atomic_write_text
from cnnctl.recipe.config_file import build_train_config, dump_yaml
from cnnctl.recipe.options import MACHINE_OPTIONS
from cnnctl.tune.storage import shown_url

if TYPE_CHECKING:
    import optuna

    from cnnctl.tune.study import Search

BEST_CONFIG = "best.yaml"
SUMMARY = "summary.json"


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_params(values: dict[str, Any]) -> str:
    return " ".join(f"{name}={format_value(value)}" for name, value in values.items())


def trial_value(trial: optuna.trial.FrozenTrial) -> float | None:
    """The objective of a complete trial; a pruned trial's last reported value."""
    if trial.value is not None:
        return float(trial.value)
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def state_name(trial: optuna.trial.FrozenTrial) -> str:
    """complete, pruned, running, waiting; failed (with an error of its own), interrupted (Ctrl-C, saved) or
    lost (its process died without a word: killed, a machine gone; found by the missing heartbeat)."""
    if trial.state.name == "FAIL":
        if "error" in trial.user_attrs:
            return "failed"
        return "interrupted" if "interrupted" in trial.user_attrs else "lost"
    return trial.state.name.lower()


def trial_line(trial: optuna.trial.FrozenTrial, monitor: str) -> str:
    """One line when a trial ends: ``trial 3 complete: val_acc 0.9512  lr=0.0012 batch_size=64  (12.3 s)``."""
    state = state_name(trial)
    value = trial_value(trial)
    what = f"{monitor} {value:.4f}" if value is not None else "no value"
    if state == "pruned":
        what += f" after epoch {max(trial.intermediate_values)}" if trial.intermediate_values else ""
    seconds = trial_seconds(trial)
    line = f"trial {trial.number} {state}: {what}  {format_params(trial.params)}"
    if seconds is not None:
        line += f"  ({seconds:.1f} s)"
    if "error" in trial.user_attrs:
        line += f" — {trial.user_attrs['error']}"
    elif "interrupted" in trial.user_attrs:
        line += f" — interrupted, saved in {trial.user_attrs['interrupted']}"
    return line


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial, in trial order: what the table and --json show."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append({
            "trial": trial.number, "state": state_name(trial), "value": trial_value(trial),
            "params": dict(trial.params), "epochs": len(trial.intermediate_values), "seconds": trial_seconds(trial),
            "run_dir": trial.user_attrs.get("run_dir"), "worker": trial.user_attrs.get("worker"),
            **({"error": trial.user_attrs["error"]} if "error" in trial.user_attrs else {}),
            **({"continues_trial": trial.user_attrs["continues_trial"]}
               if "continues_trial" in trial.user_attrs else {}),
        })
    return rows


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def write_best_config(search: Search, best: optuna.trial.FrozenTrial) -> Path | None:
    """``best.yaml`` in the search folder: the best trial's resolved configuration, which ``cnnctl train --config``
    trains again (into ``--out``'s usual numbered folders, not the search's)."""
    document = best.user_attrs.get("config")
    if not document:
        return None
    # The trial's own folder name goes; where to write, read the data and train are this machine's (the best
    # trial may have run on another one).
    kept = {key: value for key, value in document.items() if key not in (*MACHINE_OPTIONS, "name")}
    here = {key: search.spec.options[key] for key in MACHINE_OPTIONS if key in search.spec.options}
    text = dump_yaml(build_train_config({**kept, **here}, source=f"trial {best.number}'s configuration"))
    if text is None:
        return None
    path = search.tune_dir / BEST_CONFIG
    header = (f"# the best trial ({best.number}) of the search in {search.tune_dir}: {search.spec.monitor} "
              f"{best.value:.6g}\n")
    atomic_write_text(path, header + text)
    return path


def plot_study(study: optuna.Study, tune_dir: Path, monitor: str) -> tuple[list[Path], list[str]]:
    """history.png (the objective per trial, with the best so far) and importance.png (how much each parameter
    mattered, by Optuna's default evaluator), drawn by ``optuna.visualization.matplotlib``. Returns the files
    written and a note for each plot that could not be drawn (too few finished trials, one parameter...)."""
    import functools
    import warnings

    import optuna
    from optuna.trial import TrialState

    missing = plots.available()
    if missing:
        return [], [missing]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, notes = [], []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # PED-ANOVA (Optuna 5's default importance evaluator) needs numpy only; fANOVA would need scikit-learn
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    drawers = {"history.png": optuna.visualization.matplotlib.plot_optimization_history,
               "importance.png": functools.partial(optuna.visualization.matplotlib.plot_param_importances,
                                                   evaluator=evaluator)}
    for name, draw in drawers.items():
        if name == "importance.png" and (len(complete) < 2 or not study.best_trial.params):
            notes.append("importance.png needs at least 2 complete trials")
            continue
        if not complete:
            notes.append(f"{name} needs a complete trial")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
            try:
                axes = draw(study, target_name=monitor)
            except (ValueError, RuntimeError) as error:
                notes.append(f"{name}: {error}")
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        with atomic_path(tune_dir / name) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
        plt.close(figure)
        written.append(tune_dir / name)
    return written, notes


def summary_document(search: Search, rows: list[dict[str, Any]], best: optuna.trial.FrozenTrial | None,
                     best_config: Path | None, plots: list[Path]) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return {
        "tune_dir": str(search.tune_dir), "study": search.spec.study_name, "storage": shown_url(search.url),
        "monitor": search.spec.monitor, "direction": search.spec.direction, "objective_split": "validation",
        "trials_requested": search.spec.trials, "space": search.spec.space,
        "best": None if best is None else {
            "trial": best.number, "value": best.value, "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"), "config": str(best_config) if best_config else None},
        "trials": [{**row, "value": clean(row["value"])} for row in rows],
        "plots": [str(path) for path in plots],
    }


def finish(search: Search) -> dict[str, Any]:
    """Everything written at the end of a search (best.yaml, plots, summary.json); returns the summary."""
    rows = trial_rows(search.study)
    best = best_trial(search.study)
    best_config = write_best_config(search, best) if best is not None else None
    plots, notes = plot_study(search.study, search.tune_dir, search.spec.monitor)
    document = summary_document(search, rows, best, best_config, plots)
    document["notes"] = notes
    atomic_write_text(search.tune_dir / SUMMARY, json.dumps(document, indent=2, default=str) + "\n")
    return document
