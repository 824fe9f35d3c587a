"""Opening tuner's database from a flow: a database a user pointed at wrongly is a UserError."""

from __future__ import annotations

import inspect
from typing import Callable

from db import Database, DatabaseUnusable, open_database
from tuner.errors import UserError


def open_db(url: str | None, *, create: bool = True) -> Database:
    """create=False for commands that only read: a missing database is an error, not created."""
    try:
        return open_database(url, create=create)
    except DatabaseUnusable as e:
        raise UserError(str(e)) from None


def optuna_storage(url: str, on_stale: Callable | None = None):
    """Optuna's storage on tuner's database, its tables created safely when several tune processes
    start on a fresh database at once. With `on_stale` (tuner.tuning.claims.on_stale): trial
    heartbeats on, and the callback for a trial failed as stale."""
    import optuna

    from db.engine import engine_kwargs, retry_schema_race, serialise_sqlite

    kwargs: dict = {"engine_kwargs": engine_kwargs(url)}
    if on_stale is not None:
        from tuner.tuning.heartbeat import GRACE_S, HEARTBEAT_S

        # Optuna 4.9 renamed failed_trial_callback to heartbeat_stale_trial_callback
        params = inspect.signature(optuna.storages.RDBStorage).parameters
        name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
        kwargs |= {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S, name: on_stale}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = retry_schema_race(lambda: optuna.storages.RDBStorage(url, **kwargs))
    serialise_sqlite(storage.engine)
    return storage
