"""Migration 0002 (profile runs, hot ops, consistency results) and its queries, on real SQLite."""

import pytest
from sqlalchemy import create_engine, inspect, text

from db import open_database, queries
from db import profile_queries as pq
from db.migrate import current_revision, downgrade, head_revision, upgrade

ENV = {"device": "cpu", "torch": "2.13.0", "triton": "3.6.0", "python": "3.11"}
NEW = {"tuner_profile_runs", "tuner_hot_ops", "tuner_consistency_results"}


def _run_fields(**over):
    return {"workloads": "text", "scale": 0.05, "dtype": "float32", "device": "cpu", "time_source": "cpu",
            "flaggems": False, "options": {}, "model": {"scale": 0.05}, "trace_path": "t.json",
            "total_us": 100.0} | over


def _row(op, total, **over):
    return {"op": op, "shapes": "[[4, 8], [8, 16]]", "dtype": "float32", "kernel": "cpu", "calls": 2,
            "total_us": total, "share": total / 100, "tunable": "mm" if "mm" in op else "not tunable",
            "key": None} | over


def test_0001_database_is_upgraded_with_its_data_kept(tmp_path):
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine, "0001")  # a database as the previous release left it
    with engine.begin() as c:
        c.execute(text("insert into tuner_environments (fingerprint, device, torch, triton, python, created_at) "
                       "values ('fp-old', 'cuda', '2.11', '3.6', '3.11', '2026-01-01')"))
    assert current_revision(engine) == "0001"
    assert not NEW & set(inspect(engine).get_table_names())
    engine.dispose()

    db = open_database(str(path))  # opening migrates to head
    assert current_revision(db.engine) == head_revision()
    assert NEW <= set(inspect(db.engine).get_table_names())
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp-old", ENV)
        assert env.id == 1 and env.device == "cuda"  # the old row, not a new one
        run = pq.add_profile_run(s, env, [_row("aten::mm", 60.0)], **_run_fields())
        s.commit()
        assert run.id == 1


def test_downgrade_to_0001_drops_only_the_new_tables(tmp_path):
    db = open_database(str(tmp_path / "t.db"))
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", ENV)
        pq.add_profile_run(s, env, [_row("aten::mm", 60.0)], **_run_fields())
        s.commit()
    downgrade(db.engine, "0001")
    tables = set(inspect(db.engine).get_table_names())
    assert not NEW & tables and "tuner_environments" in tables
    with db.engine.connect() as c:
        assert c.execute(text("select fingerprint from tuner_environments")).scalar_one() == "fp1"
    upgrade(db.engine)
    assert NEW <= set(inspect(db.engine).get_table_names())


def test_profile_run_rows_keep_their_rank_and_latest_is_newest(tmp_path):
    db = open_database(str(tmp_path / "t.db"))
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", ENV)
        first = pq.add_profile_run(s, env, [_row("aten::mm", 60.0), _row("aten::add", 30.0)], **_run_fields())
        second = pq.add_profile_run(s, env, [_row("aten::bmm", 5.0)], **_run_fields(flaggems=True))
        s.commit()
        first_id, second_id = first.id, second.id
    with db.session() as s:
        assert pq.get_profile_run(s, "latest").id == second_id
        assert pq.get_profile_run(s, str(first_id)).id == first_id
        assert pq.get_profile_run(s, 999) is None and pq.get_profile_run(s, "abc") is None
        ops = pq.hot_ops(s, first_id)
        assert [(h.rank, h.op) for h in ops] == [(1, "aten::mm"), (2, "aten::add")]
        assert [h.op for h in pq.hot_ops(s, first_id, top=1)] == ["aten::mm"]
        assert pq.get_profile_run(s, second_id).flaggems is True


def _check(op, inputs, status, fn=None):
    return {"op": op, "gems_fn": fn or op, "inputs": inputs, "status": status}


def test_exclude_list_uses_the_newest_result_per_op_and_inputs(tmp_path):
    db = open_database(str(tmp_path / "t.db"))
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", ENV)
        other = queries.get_or_create_environment(s, "fp2", ENV)
        pq.add_consistency_results(s, env, [
            _check("rsqrt", "bf16[4]", "crash"), _check("mm", "a", "mismatch"), _check("add.Tensor", "a", "pass", "add"),
            _check("_to_copy", "a", "mismatch", "to_copy"), _check("mean.dim", "a", "skipped", "mean_dim"),
        ])
        pq.add_consistency_results(s, env, [_check("mm", "a", "pass")])  # fixed since: newest wins
        pq.add_consistency_results(s, other, [_check("abs", "a", "crash")])
        s.commit()
    with db.session() as s:
        assert pq.exclude_list(s, "fp1") == ["rsqrt", "to_copy"]
        assert pq.exclude_list(s, 2) == ["abs"]
        assert pq.exclude_list(s, "never-checked") == []
        with pytest.raises(ValueError):
            env = queries.get_or_create_environment(s, "fp1", ENV)
            pq.add_consistency_results(s, env, [_check("x", "a", "fine")])
