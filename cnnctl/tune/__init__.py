"""Hyper-parameter search on Optuna (``cnnctl tune``; ``pip install 'cnnctl[tune]'``).

Optuna samples each trial's values (TPE), prunes hopeless trials from their per-epoch validation values, and
keeps the study in a relational database: a SQLite file in the search folder by default, or any SQLAlchemy URL
(PostgreSQL, MySQL) that several processes on several machines share. cnnctl adds the trials themselves: each
is an ordinary run folder (``tune-NAME/trial-K``) trained by the usual Trainer. See docs/tune.md.

``space`` parses and checks the search space, ``storage`` opens the database, ``study`` runs the search (the
budget, the objective, workers), ``trainer`` is one trial's training and ``report`` the table, best.yaml and
plots at the end.
"""

from __future__ import annotations

from cnnctl.errors import UsageError


def require_optuna() -> None:
    """One line, not an ImportError, when the optional extra is not installed."""
    try:
        import optuna  # noqa: F401
    except ImportError as error:
        raise UsageError("cnnctl tune needs Optuna, which is not installed",
                         hint="pip install 'cnnctl[tune]'") from error
