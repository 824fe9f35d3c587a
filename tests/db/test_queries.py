from db import open_database
from db import queries

ENV = {"device": "cpu", "torch": "2.13.0", "triton": "3.6.0", "python": "3.11"}


def _best(s, env, run, time_us, config, confirmed=True):
    return queries.upsert_best(
        s, environment_id=env.id, kernel="mm", key_values={"M": 1, "N": 64, "K": 64, "BT": 1}, dtype="fp16",
        run_id=run.id, kernel_source_hash="h", config=config, time_us=time_us, untuned_us=None, native_us=20.0,
        speedup_vs_untuned=None, speedup_vs_native=20.0 / time_us, max_abs_error=0.01, rel_error=1e-4,
        trials_used=3, timing="interpreter-wall", study_name="s", confirmed=confirmed,
    )


def _store_args(db) -> dict:
    """store_best's fields for one mm key of a new environment and run in `db`, but config and time."""
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", ENV)
        run = queries.start_run(s, env, kernel="mm", sampler="tpe", device="cpu", compile_workers=0)
        s.commit()
        env_id, run_id = env.id, run.id
    return dict(environment_id=env_id, kernel="mm", key_values={"M": 1, "N": 64, "K": 64, "BT": 1}, dtype="fp16",
                run_id=run_id, kernel_source_hash="h", native_us=20.0, max_abs_error=0.01, rel_error=1e-4,
                trials_used=3, timing="interpreter-wall", study_name="s")


def test_upsert_replaces_the_best_of_a_key(tmp_path):
    db = open_database(str(tmp_path / "t.db"))
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", ENV)
        assert queries.get_or_create_environment(s, "fp1", ENV).id == env.id
        run = queries.start_run(s, env, kernel="mm", sampler="tpe", device="cpu", compile_workers=0)
        _best(s, env, run, 10.0, {"BLOCK_M": 16})
        _best(s, env, run, 8.0, {"BLOCK_M": 32})
        s.commit()
    with db.session() as s:
        recs = queries.records(queries.best_configs(s, kernel="mm"))
    assert len(recs) == 1
    assert recs[0]["time_us"] == 8.0 and recs[0]["config"] == {"BLOCK_M": 32}
    assert recs[0]["key"] == {"M": 1, "N": 64, "K": 64, "BT": 1}
    assert recs[0]["environment"]["fingerprint"] == "fp1"


def test_a_slower_winner_does_not_replace_the_stored_best(tmp_path):
    """Two processes tuning one key: the one finishing last with a slower config keeps the faster
    stored (the same config re-timed slower too); a new kernel source replaces whatever was there."""
    db = open_database(str(tmp_path / "t.db"))
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", ENV)
        run = queries.start_run(s, env, kernel="mm", sampler="tpe", device="cpu", compile_workers=0)
        _best(s, env, run, 8.0, {"BLOCK_M": 32})
        _best(s, env, run, 9.0, {"BLOCK_M": 16})  # slower, another config: kept out
        assert queries.records(queries.best_configs(s))[0]["config"] == {"BLOCK_M": 32}
        _best(s, env, run, 8.5, {"BLOCK_M": 32})  # the same config re-timed slower: kept out
        assert queries.records(queries.best_configs(s))[0]["time_us"] == 8.0
        _best(s, env, run, 7.5, {"BLOCK_M": 32})  # re-timed faster: in
        assert queries.records(queries.best_configs(s))[0]["time_us"] == 7.5
        queries.upsert_best(s, environment_id=env.id, kernel="mm", key_values={"M": 1, "N": 64, "K": 64, "BT": 1},
                            dtype="fp16", kernel_source_hash="new", config={"BLOCK_M": 64}, time_us=12.0)
        assert queries.records(queries.best_configs(s))[0]["config"] == {"BLOCK_M": 64}


def test_provisional_bests_give_way_to_the_confirmed_one(tmp_path):
    """A search stores its best as it improves (confirmed=False, search timings); the side-by-side
    pass at the end of the key replaces it even when its timing is slower; a provisional row never
    replaces a confirmed one, and a confirmed one replaces a confirmed one only when faster."""
    db = open_database(str(tmp_path / "t.db"))
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", ENV)
        run = queries.start_run(s, env, kernel="mm", sampler="tpe", device="cpu", compile_workers=0)
        _best(s, env, run, 9.0, {"BLOCK_M": 16}, confirmed=False)
        _best(s, env, run, 7.0, {"BLOCK_M": 32}, confirmed=False)  # improved: stored at once
        (rec,) = queries.records(queries.best_configs(s))
        assert rec["time_us"] == 7.0 and not rec["confirmed"]
        _best(s, env, run, 7.4, {"BLOCK_M": 16})  # the side-by-side winner, slower than 7.0: in
        (rec,) = queries.records(queries.best_configs(s))
        assert rec["config"] == {"BLOCK_M": 16} and rec["time_us"] == 7.4 and rec["confirmed"]
        _best(s, env, run, 6.0, {"BLOCK_M": 64}, confirmed=False)  # another process's search: out
        assert queries.records(queries.best_configs(s))[0]["time_us"] == 7.4
        _best(s, env, run, 7.6, {"BLOCK_M": 64})  # its confirmation, slower: out
        _best(s, env, run, 7.1, {"BLOCK_M": 64})  # faster: in
        (rec,) = queries.records(queries.best_configs(s))
        assert rec["config"] == {"BLOCK_M": 64} and rec["time_us"] == 7.1 and rec["confirmed"]


def test_store_best_survives_a_concurrent_first_insert(pg_url):
    """A second connection inserts the key between this one's read and write: the unique key
    refuses the insert, store_best retries, compares, and keeps the faster. PostgreSQL: on SQLite
    every transaction begins IMMEDIATE (db.engine.serialise_sqlite), so the other one waits."""
    import threading

    from sqlalchemy import event

    db = open_database(pg_url)
    args = _store_args(db) | dict(untuned_us=None, speedup_vs_untuned=None, speedup_vs_native=None)
    fired = []

    def other_process_inserts_first(session, flush_context, instances):
        if not fired:
            fired.append(1)
            t = threading.Thread(target=queries.store_best, args=(db.session,),
                                 kwargs={**args, "config": {"BLOCK_M": 16}, "time_us": 7.0})
            t.start()
            t.join()

    event.listen(db.sessions, "before_flush", other_process_inserts_first)
    queries.store_best(db.sessions, **args, config={"BLOCK_M": 32}, time_us=9.0)
    event.remove(db.sessions, "before_flush", other_process_inserts_first)
    with db.session() as s:
        (rec,) = queries.records(queries.best_configs(s))
    assert fired and rec["config"] == {"BLOCK_M": 16} and rec["time_us"] == 7.0


def test_store_best_says_whether_it_kept_the_new_best(tmp_path):
    """`tune --json` printed "stored": true for a rerun whose slower best the database kept out
    (the stored row stayed): store_best answers whether its fields are the stored row now."""
    db = open_database(str(tmp_path / "t.db"))
    args = _store_args(db) | {"confirmed": True}
    assert queries.store_best(db.session, **args, config={"BLOCK_M": 16}, time_us=8.0) is True  # first insert
    assert queries.store_best(db.session, **args, config={"BLOCK_M": 32}, time_us=9.0) is False  # slower: kept out
    assert queries.store_best(db.session, **args, config={"BLOCK_M": 32}, time_us=7.0) is True
    with db.session() as s:
        (rec,) = queries.records(queries.best_configs(s))
    assert rec["config"] == {"BLOCK_M": 32} and rec["time_us"] == 7.0


def test_stored_records_read_without_creating_anything(tmp_path):
    import pytest

    from db import DatabaseUnusable

    with pytest.raises(DatabaseUnusable):
        queries.stored_records(str(tmp_path / "none.db"))
    assert not (tmp_path / "none.db").exists()
    db = open_database(str(tmp_path / "t.db"))
    queries.store_best(db.session, config={"BLOCK_M": 16}, time_us=10.0, confirmed=True, **_store_args(db))
    db.dispose()
    recs = queries.stored_records(str(tmp_path / "t.db"))
    assert [(r["kernel"], r["key"], r["config"], r["time_us"]) for r in recs] == [
        ("mm", {"M": 1, "N": 64, "K": 64, "BT": 1}, {"BLOCK_M": 16}, 10.0)]


def test_a_slower_winner_of_another_variant_does_not_replace_a_current_row(tmp_path):
    """Each variant hashes its own kernel module, so a winner of another variant always has another
    source hash. Session 17 (H200): down at M=4096 lost its persistent row (775.7 µs, current
    source) to an fg_tma winner timed 806.3 µs that way. With source_now the stored row is replaced
    only when its own source changed since; times decide otherwise."""
    db = open_database(str(tmp_path / "t.db"))
    args = _store_args(db)
    persistent = {"variant": "persistent", "BLOCK_M": 128}
    now = {"persistent": "h-persistent", "fg_tma": "h-fg"}

    def source_now(config):
        return now[config["variant"]]

    def store(config, us, **kw):
        return queries.store_best(db.session, **{**args, "kernel_source_hash": now[config["variant"]]},
                                  config=config, time_us=us, confirmed=True, **kw)

    assert store(persistent, 775.7)
    assert not store({"variant": "fg_tma", "BLOCK_M": 128}, 806.3, source_now=source_now)
    assert store({"variant": "fg_tma", "BLOCK_M": 64}, 760.0, source_now=source_now)  # faster: in
    with db.session() as s:
        (rec,) = queries.records(queries.best_configs(s))
    assert rec["config"] == {"variant": "fg_tma", "BLOCK_M": 64} and rec["time_us"] == 760.0
    now["fg_tma"] = "h-fg-edited"  # the stored row's kernel changed: its timing is of old code
    assert store(persistent, 790.0, source_now=source_now)
    # a source that cannot be read here (FlagGems' kernels on a CPU host) counts as changed
    assert store({"variant": "fg_tma", "BLOCK_M": 32}, 900.0, source_now=lambda c: 1 / 0)
    # without source_now (older callers) every other hash replaces, as before
    assert store(persistent, 950.0)
    # a row timed on old code (a merged database's) does not replace a current one, faster or not
    old_code = {**args, "kernel_source_hash": "h-fg-before-the-edit"}
    assert not queries.store_best(db.session, **old_code, config={"variant": "fg_tma", "BLOCK_M": 16},
                                  time_us=100.0, confirmed=True, source_now=source_now)
