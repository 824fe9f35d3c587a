import sqlite3

import optuna
import pytest
from sqlalchemy import inspect

from db import DatabaseUnusable, open_database, resolve_url
from db.engine import ENV_VAR, VERSION_TABLE
from db.migrate import current_revision, downgrade, head_revision, upgrade


def test_url_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_url(None).endswith("/.tuner/tuner.db")
    monkeypatch.setenv(ENV_VAR, "sqlite:///from-env.db")
    assert resolve_url(None) == "sqlite:///from-env.db"
    assert resolve_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"


def test_fresh_database_is_migrated_to_head(tmp_path):
    db = open_database(str(tmp_path / "t.db"))
    tables = set(inspect(db.engine).get_table_names())
    assert {"tuner_environments", "tuner_tuning_runs", "tuner_best_configs", VERSION_TABLE} <= tables
    assert current_revision(db.engine) == head_revision()


def test_migrations_downgrade_and_upgrade(tmp_path):
    db = open_database(str(tmp_path / "t.db"))
    downgrade(db.engine, "base")
    assert "tuner_best_configs" not in inspect(db.engine).get_table_names()
    upgrade(db.engine)
    assert "tuner_best_configs" in inspect(db.engine).get_table_names()


def test_optuna_shares_the_database(tmp_path):
    db = open_database(str(tmp_path / "t.db"))
    optuna.create_study(study_name="s", storage=optuna.storages.RDBStorage(db.url))
    db.dispose()
    # reopening with Optuna's tables present is fine, and both version tables coexist
    db = open_database(str(tmp_path / "t.db"))
    tables = set(inspect(db.engine).get_table_names())
    assert {"studies", "alembic_version", VERSION_TABLE} <= tables


def test_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as c:
        c.execute("create table customers (id integer)")
    with pytest.raises(DatabaseUnusable, match="another program"):
        open_database(str(path))
    with sqlite3.connect(path) as c:  # nothing was written into it
        names = {r[0] for r in c.execute("select name from sqlite_master")}
    assert names == {"customers"}


def test_not_a_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("hello")
    with pytest.raises(DatabaseUnusable, match="not a SQLite database"):
        open_database(str(path))
    assert path.read_text() == "hello"


def test_missing_database_when_reading(tmp_path):
    with pytest.raises(DatabaseUnusable, match="no tuner database"):
        open_database(str(tmp_path / "nope.db"), create=False)
    assert not (tmp_path / "nope.db").exists()
