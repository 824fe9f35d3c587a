"""`tuner profile` flow on CPU: a real scaled-down model profiled natively, stored in real SQLite."""

import json
from dataclasses import fields

import pytest
from sqlalchemy import select

from db import BestConfig, ProfileRun, open_database
from db import profile_queries as pq
from db import queries
from tuner.errors import UserError
from tuner.profiling.flow import CheckRequest, ProfileRequest, WorkloadRequest, profile, with_gains
from tuner.profiling.hot_keys import keys_from_profile

SMALL = dict(workloads=["text"], scale=0.05, device="cpu", dtype="fp32", prompt_tokens=16, decode_batches=[1, 4],
             decode_steps=2, top=10, check=False)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prof")
    url = str(tmp / "t.db")
    out = profile(ProfileRequest(**SMALL, trace=str(tmp / "trace.json"), db_url=url))
    return out, url, tmp


def test_native_run_is_stored_ranked_and_labelled(profiled):
    out, url, _ = profiled
    assert len(out.modes) == 1 and not out.modes[0].flaggems  # CPU: FlagGems mode is skipped, with a note
    assert any("FlagGems profile skipped" in n for n in out.notes)
    assert "scale 0.05" in out.label and "NOT the real model" in out.label and "CPU op self time" in out.label
    db = open_database(url, create=False)
    with db.session() as s:
        run = pq.get_profile_run(s, "latest")
        assert run.id == out.modes[0].run_id and run.flaggems is False and run.time_source == "cpu"
        assert run.scale == 0.05 and run.model["exact_shapes"] is False and run.workloads == "text"
        rows = pq.hot_ops(s, run)
        assert len(rows) == out.modes[0].row_count > 10
        assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
        times = [r.total_us for r in rows]
        assert times == sorted(times, reverse=True)
        assert abs(sum(r.share for r in rows) - 1.0) < 1e-6
        mm = [r for r in rows if r.op == "aten::mm"]
        assert mm and all(r.tunable == "mm" and r.key["K"] > 0 for r in mm)
    db.dispose()
    assert [r["op"] for r in out.modes[0].rows] == [r.op for r in rows[:10]]


def test_trace_file_is_written(profiled):
    out, _, tmp = profiled
    trace = json.loads((tmp / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "aten::mm" in names and any(str(n).startswith("text.decode") for n in names)


def _store_best(url, env_id, key, time_us, native_us, untuned_us, kernel="mm"):
    db = open_database(url)
    with db.session() as s:
        env = s.get(queries.Environment, env_id)
        run = queries.start_run(s, env, kernel=kernel, sampler="tpe", device="cpu", compile_workers=0)
        queries.upsert_best(s, environment_id=env_id, kernel=kernel, key_values={**key, "BT": 1}, dtype="fp32",
                            run_id=run.id, kernel_source_hash="h", config={"BLOCK_M": 16}, time_us=time_us,
                            untuned_us=untuned_us, native_us=native_us, speedup_vs_untuned=None,
                            speedup_vs_native=None, max_abs_error=0.0, rel_error=0.0, trials_used=1,
                            timing="interpreter-wall", study_name="s")
        s.commit()
    db.dispose()


def test_predicted_gain_from_a_stored_best_config(profiled, tmp_path):
    out, url, _ = profiled
    db = open_database(url)
    with db.session() as s:
        run = s.get(ProfileRun, out.modes[0].run_id)
        env_id = run.environment_id
        mm = next(r for r in pq.hot_ops(s, run) if r.op == "aten::mm")
        key = {k: mm.key[k] for k in ("M", "N", "K")}
    db.dispose()
    _store_best(url, env_id, key, time_us=2.0, native_us=5.0, untuned_us=3.5)
    again = profile(ProfileRequest(**SMALL, trace=str(tmp_path / "t2.json"), db_url=url))
    db = open_database(url)
    with db.session() as s:
        rows = pq.hot_ops(s, again.modes[0].run_id)
        hit = [r for r in rows if r.op == "aten::mm" and (r.key["M"], r.key["N"], r.key["K"]) == tuple(key.values())]
        assert hit and all(r.predicted_gain_us == pytest.approx(r.calls * (5.0 - 2.0)) for r in hit)
        others = [r for r in rows if r not in hit]
        assert all(r.predicted_gain_us is None for r in others)
        # FlagGems mode compares against FlagGems' untuned choice instead of native
        as_gems = with_gains(hit, s, env_id, flaggems=True)
        assert as_gems[0]["predicted_gain_us"] == pytest.approx(hit[0].calls * (3.5 - 2.0))
        # a tuned config slower than the baseline predicts no gain
        best = s.scalars(select(BestConfig)).one()
        best.time_us = 9.0
        assert with_gains(hit, s, env_id, flaggems=False)[0]["predicted_gain_us"] is None
        s.rollback()
    db.dispose()
    # an aten::addmm row takes its prediction from a stored addmm winner, never from an mm one
    _store_best(url, env_id, key, time_us=1.0, native_us=4.0, untuned_us=6.0, kernel="addmm")
    row = {"op": "aten::addmm", "shapes": "[]", "dtype": "float32", "kernel": "k", "calls": 3,
           "total_us": 1.0, "share": 0.1, "tunable": "addmm", "key": {**key, "batch": 1, "bias": True}}
    db = open_database(url)
    with db.session() as s:
        gems, native = with_gains([row], s, env_id, flaggems=True), with_gains([row], s, env_id, flaggems=False)
        assert gems[0]["predicted_gain_us"] == pytest.approx(3 * (6.0 - 1.0))
        assert native[0]["predicted_gain_us"] == pytest.approx(3 * (4.0 - 1.0))
        as_mm = with_gains([row | {"op": "aten::mm", "tunable": "mm"}], s, env_id, flaggems=True)
        assert as_mm[0]["predicted_gain_us"] == pytest.approx(3 * (3.5 - 2.0))
    db.dispose()


def test_keys_from_profile(profiled):
    out, url, _ = profiled
    keys = keys_from_profile(url, str(out.modes[0].run_id), 3, "mm")
    assert 1 <= len(keys) <= 3 and len(set(keys)) == len(keys)
    first_mm = next(r for r in out.modes[0].rows if r["tunable"] == "mm" and r["key"]["batch"] == 1)
    assert keys[0] == f"{first_mm['key']['M']},{first_mm['key']['N']},{first_mm['key']['K']}"
    all_keys = keys_from_profile(url, str(out.modes[0].run_id), None, "mm")
    db = open_database(url, create=False)
    with db.session() as s:
        single = [f"{r.key['M']},{r.key['N']},{r.key['K']}" for r in pq.hot_ops(s, out.modes[0].run_id)
                  if r.tunable == "mm" and r.key["batch"] == 1]
        # a run with a batched row (attention bmm) ranked first: it gives no mm key
        env = s.get(ProfileRun, out.modes[0].run_id).environment
        row = {"shapes": "[]", "dtype": "bfloat16", "kernel": "k", "calls": 1, "share": 0.5, "tunable": "mm"}
        other = pq.add_profile_run(s, env, [
            row | {"op": "aten::bmm", "total_us": 9.0, "key": {"M": 64, "N": 1024, "K": 128, "batch": 280}},
            row | {"op": "aten::mm", "total_us": 8.0, "key": {"M": 16, "N": 4608, "K": 3584, "batch": 1}},
            row | {"op": "aten::addmm", "total_us": 7.0, "key": {"M": 16, "N": 4608, "K": 3584, "batch": 1}},
            row | {"op": "aten::softmax", "total_us": 6.0, "tunable": "not tunable", "key": None},
            row | {"op": "aten::addmm", "total_us": 5.0, "tunable": "addmm",
                   "key": {"M": 10240, "N": 1152, "K": 1152, "batch": 1, "bias": True}},
            row | {"op": "aten::bmm", "total_us": 4.0, "tunable": "bmm",
                   "key": {"M": 10, "N": 3584, "K": 3584, "batch": 1024, "bias": False}},
        ], workloads="text", scale=1.0, dtype="bfloat16", device="cuda", time_source="cuda", flaggems=False,
            options={}, model={}, trace_path=None, total_us=30.0)
        s.commit()
        other_id = other.id
    db.dispose()
    assert all_keys == list(dict.fromkeys(single))
    assert keys_from_profile(url, "latest", 5, "mm") == ["16,4608,3584"]
    assert keys_from_profile(url, str(out.modes[0].run_id), None, "mm") == all_keys
    assert other_id != out.modes[0].run_id
    with pytest.raises(UserError, match="no stored profile has id"):
        keys_from_profile(url, "9999", 3, "mm")
    with pytest.raises(UserError):
        keys_from_profile(url, "latest", 3, "fused_moe")
    # addmm rows (what FlagGems' addmm kernel runs) give addmm keys; bmm rows lack the layout
    assert keys_from_profile(url, "latest", None, "addmm") == ["10240,1152,1152"]
    with pytest.raises(UserError, match="--shape BATCH,M,N,K,bmm|linear"):
        keys_from_profile(url, "latest", 3, "bmm")


def test_check_request_is_the_profile_workload_plus_the_checks_own_settings():
    """`tuner check` takes the workload fields `tuner profile` takes; only its timeout and jobs are its
    own (a profile's check_timeout_s and check_jobs), and the flows share code through as_profile()."""
    shared = [f.name for f in fields(WorkloadRequest)]
    assert [f.name for f in fields(CheckRequest)] == [*shared, "timeout_s", "jobs"]
    assert set(shared) < {f.name for f in fields(ProfileRequest)}
    req = CheckRequest(workloads=["text"], scale=0.05, weights="w", device="cpu", dtype="fp32", prompt_tokens=16,
                       decode_batches=[1, 4], decode_steps=2, e2e_steps=3, timeout_s=7.5, jobs=2,
                       candidate="m:f", db_url="x.db")
    p = req.as_profile()
    assert {n: getattr(p, n) for n in shared} == {n: getattr(req, n) for n in shared}
    assert (p.check_timeout_s, p.check_jobs) == (7.5, 2)
    assert (p.top, p.check, p.flaggems, p.overhead, p.trace) == (15, True, True, False, None)  # profile defaults
