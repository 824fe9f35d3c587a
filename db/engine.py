"""Where the database is, opening it safely, and bringing its schema up to date."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.models import VERSION_TABLE

ENV_VAR = "TUNER_DB_URL"
DEFAULT_PATH = Path("~/.tuner/tuner.db")


class DatabaseUnusable(Exception):
    """The database cannot be used: unreadable, not SQL, or another program's tables."""


def default_url() -> str:
    return f"sqlite:///{DEFAULT_PATH.expanduser()}"


def shown_url(url: str) -> str:
    """`url` as tuner prints, logs and stores it: the password hidden (a PostgreSQL URL in --db or
    $TUNER_DB_URL must not land in terminals, CI logs or report files)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses (a path, or garbage): hide what looks like one
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _scrub(text: str, url: str) -> str:
    """A driver's message with the URL's password taken out, wherever it repeats it."""
    try:
        password = make_url(url).password
    except Exception:
        password = None
    return text.replace(str(password), "***") if password else text


def resolve_url(url: str | None = None) -> str:
    """--db beats $TUNER_DB_URL beats ~/.tuner/tuner.db. A bare path means a SQLite file.
    An empty --db is refused (it would silently mean the home database)."""
    if url is not None and not url.strip():
        raise DatabaseUnusable("--db is empty: give a database URL or a SQLite file path")
    url = url or os.environ.get(ENV_VAR) or default_url()
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


@dataclass
class Database:
    url: str
    engine: Engine
    sessions: sessionmaker

    def session(self) -> Session:
        return self.sessions()

    def dispose(self) -> None:
        self.engine.dispose()


# Tables another program may legitimately share our database with.
_OPTUNA_TABLES = {
    "studies", "study_directions", "study_user_attributes", "study_system_attributes",
    "trials", "trial_params", "trial_values", "trial_intermediate_values",
    "trial_user_attributes", "trial_system_attributes", "trial_heartbeats", "version_info",
    "alembic_version",
}


def _check_sqlite_file(url: str, create: bool) -> None:
    u = make_url(url)
    if not u.get_backend_name() == "sqlite" or not u.database or u.database == ":memory:":
        return
    path = Path(u.database)
    if path.exists():
        if path.is_dir():
            raise DatabaseUnusable(f"{path} is a directory, not a SQLite database file")
        with open(path, "rb") as fh:
            head = fh.read(16)
        if head and head != b"SQLite format 3\x00":
            raise DatabaseUnusable(f"{path} is not a SQLite database file")
    elif not create:
        raise DatabaseUnusable(f"no tuner database at {path} (nothing has been stored yet)")
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseUnusable(f"cannot create the database folder {path.parent}: {e.strerror}") from None


def unusable_from(e: BaseException) -> DatabaseUnusable | None:
    """A database error its user can fix (a read-only file, a full disk, a locked database) as one
    sentence; None for any other (a bug keeps its traceback)."""
    if isinstance(e, OperationalError):
        msg = str(getattr(e, "orig", e))
        if any(s in msg.lower() for s in ("readonly", "read-only", "disk is full", "database is locked")):
            return DatabaseUnusable(f"the database refused a write: {msg}")
    return None


def open_database(url: str | None = None, *, create: bool = True) -> Database:
    """Open (and with create=True, create or migrate) tuner's database at `url`.

    Refuses a database holding tables that are neither tuner's nor Optuna's, so that a
    mistyped --db never writes into someone else's schema.
    """
    url = resolve_url(url)
    try:
        make_url(url)
    except ArgumentError:
        raise DatabaseUnusable(f"{shown_url(url)!r} is not a database URL") from None
    _check_sqlite_file(url, create)
    try:
        engine = create_engine(url, future=True, **engine_kwargs(url))
        tables = set(inspect(engine).get_table_names())
    except (OperationalError, DatabaseError) as e:
        raise DatabaseUnusable(f"cannot read the database at {shown_url(url)}: {_scrub(str(e.orig), url)}") from None
    except Exception as e:  # missing driver, bad host, ...
        hint = (" (`pip install 'tuner[postgres]'` installs the PostgreSQL driver)"
                if isinstance(e, ModuleNotFoundError) and make_url(url).get_backend_name() == "postgresql" else "")
        raise DatabaseUnusable(f"cannot open the database at {shown_url(url)}: {_scrub(str(e), url)}{hint}") from None
    foreign = {t for t in tables if not t.startswith("tuner_")} - _OPTUNA_TABLES
    if foreign:
        engine.dispose()
        raise DatabaseUnusable(
            f"the database at {shown_url(url)} belongs to another program (tables: {', '.join(sorted(foreign)[:5])})"
        )
    if VERSION_TABLE not in tables:
        if not create:
            engine.dispose()
            raise DatabaseUnusable(f"the database at {shown_url(url)} has no tuner schema")
    from db.migrate import upgrade  # Alembic (~0.25 s to import) only once a database is opened

    retry_schema_race(lambda: upgrade(engine))
    serialise_sqlite(engine)
    return Database(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))


# SQLite lets one process write at a time and makes the others wait up to this long: the default
# 5 s was too short for 8 tune processes sharing 2 cores ("database is locked").
SQLITE_BUSY_S = 60.0


def engine_kwargs(url: str) -> dict:
    """create_engine's extra arguments for `url` (Optuna's storage takes the same)."""
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_S}}
    return {}


def serialise_sqlite(engine: Engine) -> Engine:
    """Every transaction on a SQLite `engine` starts with BEGIN IMMEDIATE (SQLAlchemy's recipe for
    pysqlite), so a read-then-write is atomic across processes. pysqlite otherwise begins only at
    the first write: two processes both read a WAITING Optuna trial, both set it RUNNING, and both
    worked it (8 tune processes on two keys: 1 or 2 of 8 crashed telling a trial the other had
    finished). Readers then wait in turn too; a transaction is short. No-op for other databases."""
    from sqlalchemy import event

    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _no_pysqlite_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners go
    return engine


def retry_schema_race(create, attempts: int = 40, pause_s: float = 0.25):
    """Run `create` (a schema setup: tuner's migrations, Optuna's tables) again while another
    process is creating the same schema: on a fresh SQLite file, 2 of 4 processes started at once
    failed with "table ... already exists" or a duplicate alembic version row. Gives up after
    `attempts` (about 10 s) and raises the last error."""
    import time

    for attempt in range(attempts):
        try:
            return create()
        except Exception as e:  # noqa: BLE001 - only the schema race is retried, by its words
            # PostgreSQL reports a table another process just created as ProgrammingError
            # (DuplicateTable) or IntegrityError (pg_type's unique index); Optuna may wrap either
            text = str(e).lower()
            race = any(w in text for w in ("already exists", "unique", "locked", "duplicate"))
            if (attempt == attempts - 1 or not race
                    or not (isinstance(e, DatabaseError) or type(e).__name__ == "StorageInternalError")):
                raise
            time.sleep(pause_s)
