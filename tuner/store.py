"""Opening tuner's database from a flow: a database a user pointed at wrongly is a UserError."""

from __future__ import annotations

from db import Database, DatabaseUnusable, open_database
from tuner.errors import UserError


def open_db(url: str | None, *, create: bool = True) -> Database:
    """create=False for commands that only read: a missing database is an error, not created."""
    try:
        return open_database(url, create=create)
    except DatabaseUnusable as e:
        raise UserError(str(e)) from None


def optuna_storage(url: str):
    """Optuna's storage on tuner's database, its tables created safely when several tune processes
    start on a fresh database at once."""
    import optuna

    from db.engine import retry_schema_race

    return retry_schema_race(lambda: optuna.storages.RDBStorage(url))
