"""Hyper-parameter search on Optuna (``cnnctl tune``; ``pip install 'cnnctl[tune]'``).

Optuna samples each trial's values (TPE), prunes hopeless trials from their per-epoch validation values, and
keeps the study in a relational database: a SQLite file in the search folder by default, or any SQLAlchemy URL
(PostgreSQL, MySQL) that several processes on several machines share. cnnctl adds the trials themselves: each
is an ordinary run folder (``tune-NAME/trial-K/1``) trained by the usual Trainer. See docs/tune.md.

``space`` parses and checks the search space, ``storage`` opens the database, ``study`` runs the search (the
budget, the objective, workers), ``trainer`` is one trial's training and ``report`` the table, best.yaml and
plots at the end.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from cnnctl.errors import UsageError
from cnnctl.recipe.commands import TUNE, api_options, api_signature, api_values
from cnnctl.recipe.config_file import coerce_options
from cnnctl.tune.report import finish
from cnnctl.tune.space import build_param
from cnnctl.tune.study import new_spec, open_search, start_search, work


def require_optuna() -> None:
    """One line, not an ImportError, when the optional extra is not installed."""
    try:
        import optuna  # noqa: F401
    except ImportError as error:
        raise UsageError("cnnctl tune needs Optuna, which is not installed",
                         hint="pip install 'cnnctl[tune]'") from error


def search(arch: str | None = None, *, space: dict[str, Any] | None = None, progress: bool = False,
           **options: Any) -> dict[str, Any]:
    """``cnnctl tune ARCH --param NAME=SPEC ... --trials N`` as a function, in this process: ``space`` maps train
    option names to SPECs (``{"lr": "loguniform:1e-4:1e-1", "batch_size": [64, 128]}``), ``options`` are the
    train options every trial shares (``dataset``, ``epochs``, ``out``, ``name``, ...). ``resume`` continues a
    search folder instead. Returns the summary (what ``--json`` prints: ``tune_dir``, ``best``, ``trials``);
    best.yaml, summary.json and the plots are written as by the command. ``progress=True`` prints each trial's
    epochs on stderr (its end is always one line there). The search's own options (``trials``, ``timeout``,
    ``pruner``, ``pruner_startup``, ``storage``, ``resume``) are ``cnnctl tune``'s, with its defaults
    (cnnctl/recipe/commands.py)."""
    require_optuna()
    own = api_values(TUNE, {name: options.pop(name) for name in _OWN if name in options}, "cnnctl.tune.search")
    trials, timeout, pruner, pruner_startup = own["trials"], own["timeout"], own["pruner"], own["pruner_startup"]
    storage, resume = own["storage"], own["resume"]
    if resume is not None:
        if arch is not None or space or options:
            raise UsageError("a resumed search keeps its own options and space",
                             hint="pass only resume= (and trials=, timeout=, storage=)")
        found = open_search(os.fspath(resume), storage_url=storage, trials=trials)
    else:
        given = coerce_options({**({"arch": arch} if arch else {}), **options}, source="cnnctl.tune.search()")
        params = [build_param(name, spec) for name, spec in (space or {}).items()]
        if not params:
            raise UsageError("nothing to search", hint='e.g. space={"lr": "loguniform:1e-4:1e-1"}')
        spec, out, name_given = new_spec(given, params, trials=trials, pruner=pruner, pruner_startup=pruner_startup)
        found = start_search(spec, out=out, name_given=name_given, storage_url=storage)
    done = work(found, timeout=timeout, quiet=not progress)
    summary = finish(found)
    if done.interrupted is not None:
        raise done.interrupted
    return summary


_OWN = tuple(option.name for option in api_options(TUNE))
search.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("arch", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("space", inspect.Parameter.KEYWORD_ONLY, default=None),
    *api_signature(TUNE).parameters.values(),
    inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=False),
    inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD)], return_annotation="dict[str, Any]")
