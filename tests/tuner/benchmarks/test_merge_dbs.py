"""merge_dbs: best configs of several databases into one, under the store's rules."""
from db import open_database, queries
from tuner.benchmarks import merge_dbs

ENV = {"device": "cpu", "torch": "2.13.0", "triton": "3.6.0", "python": "3.12"}


def _db_with(path, config, time_us, confirmed=True):
    from kernels import get_kernel

    db = open_database(str(path))
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", ENV)
        run = queries.start_run(s, env, kernel="mm", sampler="tpe", device="cpu", compile_workers=0)
        queries.upsert_best(s, environment_id=env.id, kernel="mm", key_values={"M": 16, "N": 256, "K": 512, "BT": 1},
                            dtype="fp16", run_id=run.id, kernel_source_hash=get_kernel("mm").source_hash(config),
                            config=config, time_us=time_us, native_us=6.0, max_abs_error=0.0, rel_error=0.0,
                            trials_used=3, timing="w", study_name="s", confirmed=confirmed)
        s.commit()
    db.dispose()


def _stored(path):
    db = open_database(str(path), create=False)
    with db.session() as s:
        (rec,) = queries.records(queries.best_configs(s))
    db.dispose()
    return rec["config"]["variant"], rec["time_us"]


def test_a_faster_row_of_another_unchanged_variant_is_kept(tmp_path):
    """Session 17: merging put session 16's persistent row for down at M=4096 back over a slower
    fg_tma winner; the other way round a slower source row does not replace a current faster one."""
    dest, slow, fast = tmp_path / "dest.db", tmp_path / "slow.db", tmp_path / "fast.db"
    _db_with(dest, {"variant": "persistent", "BLOCK_M": 16}, 5.0)
    _db_with(slow, {"variant": "splitk", "BLOCK_M": 16}, 5.5)
    _db_with(fast, {"variant": "splitk", "BLOCK_M": 32}, 4.5)
    assert merge_dbs.merge(str(dest), [str(slow)]) == 1
    assert _stored(dest) == ("persistent", 5.0)
    merge_dbs.merge(str(dest), [str(fast)])
    assert _stored(dest) == ("splitk", 4.5)


def test_a_provisional_row_merges_as_provisional(tmp_path):
    """A search's provisional best (its own timing, not the side-by-side pass) never replaces a
    confirmed row, merged or not."""
    dest, provisional = tmp_path / "dest.db", tmp_path / "prov.db"
    _db_with(dest, {"variant": "persistent", "BLOCK_M": 16}, 5.0)
    _db_with(provisional, {"variant": "splitk", "BLOCK_M": 16}, 4.5, confirmed=False)
    merge_dbs.merge(str(dest), [str(provisional)])
    assert _stored(dest) == ("persistent", 5.0)
