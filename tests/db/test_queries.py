from db import open_database
from db import queries

ENV = {"device": "cpu", "torch": "2.13.0", "triton": "3.6.0", "python": "3.11"}


def _best(s, env, run, time_us, config):
    return queries.upsert_best(
        s, environment_id=env.id, kernel="mm", key_values={"M": 1, "N": 64, "K": 64, "BT": 1}, dtype="fp16",
        run_id=run.id, kernel_source_hash="h", config=config, time_us=time_us, untuned_us=None, native_us=20.0,
        speedup_vs_untuned=None, speedup_vs_native=20.0 / time_us, max_abs_error=0.01, rel_error=1e-4,
        trials_used=3, timing="interpreter-wall", study_name="s",
    )


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
