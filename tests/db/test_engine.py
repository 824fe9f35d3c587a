import sqlite3

import optuna
import pytest
from sqlalchemy import inspect

from db import DatabaseUnusable, open_database, resolve_url
from db.engine import ENV_VAR
from db.migrate import current_revision, downgrade, head_revision, upgrade
from db.models import VERSION_TABLE


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


def test_upgrade_keeps_best_configs_stored_before_0003(tmp_path):
    from db import queries

    db = open_database(str(tmp_path / "t.db"))
    downgrade(db.engine, "0002")
    with db.engine.begin() as c:  # a row written by a 0002-era tuner
        c.exec_driver_sql("insert into tuner_environments (fingerprint, device, torch, triton, python, created_at) "
                          "values ('fp', 'cuda', '2.11', '3.6.0', '3.12', '2026-11-24')")
        c.exec_driver_sql(
            "insert into tuner_tuning_runs (environment_id, kernel, sampler, device, compile_workers, status, "
            "started_at) values (1, 'mm', 'tpe', 'cuda', 0, 'done', '2026-11-24')")
        c.exec_driver_sql(
            "insert into tuner_best_configs (environment_id, run_id, kernel, kernel_source_hash, key, key_values, "
            "dtype, config, time_us, max_abs_error, rel_error, trials_used, timing, study_name, created_at, "
            "updated_at) values (1, 1, 'mm', 'h', 'M=1', '{\"M\": 1}', 'bf16', '{}', 5.0, 0, 0, 3, 'cuda-graph', "
            "'s', '2026-11-24', '2026-11-24')")
    db.dispose()
    db = open_database(str(tmp_path / "t.db"))
    assert current_revision(db.engine) == head_revision()
    with db.session() as s:
        (rec,) = queries.records(queries.best_configs(s))
    assert rec["time_us"] == 5.0 and rec["baselines_us"] == {}


def test_passwords_never_shown():
    from db import shown_url
    from db.engine import _scrub

    url = "postgresql+psycopg://bob:s3cret@db.example:5432/tuner"
    assert shown_url(url) == "postgresql+psycopg://bob:***@db.example:5432/tuner"
    assert shown_url("/tmp/x.db") == "/tmp/x.db" and shown_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert _scrub('FATAL: password "s3cret" rejected', url) == 'FATAL: password "***" rejected'
    with pytest.raises(DatabaseUnusable) as e:  # psycopg is not installed here, or nothing listens on port 1
        open_database("postgresql+psycopg://bob:s3cret@127.0.0.1:1/tuner")
    assert "s3cret" not in str(e.value) and "bob:***@127.0.0.1:1" in str(e.value)


def test_empty_db_is_refused_not_the_home_database():
    with pytest.raises(DatabaseUnusable, match="--db is empty"):
        resolve_url("")
    with pytest.raises(DatabaseUnusable, match="--db is empty"):
        open_database("  ")


def test_processes_starting_at_once_on_a_fresh_database_all_open_it(tmp_path):
    """6 processes open one fresh SQLite file and create Optuna's tables at the same moment (before
    the retry: 2 of 4 failed with "table ... already exists" / a duplicate alembic row)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    code = ("import sys\nfrom db import open_database\nfrom tuner.store import optuna_storage\n"
            "db = open_database(sys.argv[1])\noptuna_storage(db.url)\nprint('opened')\n")
    path = str(tmp_path / "fresh.db")
    procs = [subprocess.Popen([sys.executable, "-c", code, path], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err[-300:] for _, err in results]
    db = open_database(path)
    assert current_revision(db.engine) == head_revision()
    db.dispose()


def test_a_write_the_database_refuses_is_one_sentence(tmp_path):
    """A read-only SQLite file made `tuner tune` end in sqlalchemy's OperationalError traceback;
    unusable_from turns such a refusal into the CLI's one sentence and leaves other errors alone."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from db import unusable_from

    path = tmp_path / "ro.db"
    con = sqlite3.connect(path)
    con.execute("create table t (x int)")
    con.commit()
    con.close()
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(OperationalError) as refused:
        with engine.begin() as c:
            c.execute(text("insert into t values (1)"))
    engine.dispose()
    assert "readonly" in str(unusable_from(refused.value)) and isinstance(unusable_from(refused.value),
                                                                         DatabaseUnusable)
    assert unusable_from(ValueError("a bug")) is None
