"""Seeding FlagGems' addmm LibTuner cache, checked with FlagGems' own objects and real SQLite.

The only stand-in is the final JIT launch (`tuner.fn`), replaced by a recorder because nothing
can run on CUDA here: LibTuner.run's own key computation and cache lookup are exercised.
"""
from tests.conftest import needs_flag_gems, result, run_py
from tests.tuner.inject.conftest import LIBTUNER_LAUNCH, env_of

pytestmark = needs_flag_gems

RECORDS = """
import json
from tuner.inject.flaggems_addmm import (addmm_key, addmm_source_hash, locate_addmm_tuner,
                                         runtime_args, seed_addmm_cache)
ENV = {env!r}
RUNNING = {{k: ENV[k] for k in ("gpu_name", "triton", "flag_gems")}}
def rec(M, N, K, bm, bn, bk, w, s, bt=1, dtype="bf16", kernel="addmm"):
    return {{"kernel": kernel, "key": {{"M": M, "N": N, "K": K, "BT": bt}}, "dtype": dtype,
            "config": {{"variant": "fg_addmm", "BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": bk,
                        "num_warps": w, "num_stages": s}},
            "environment": ENV, "kernel_source_hash": addmm_source_hash()}}
t = locate_addmm_tuner()
def bm(M, N=512, K=3584, dtype="bf16"):
    c = t.cache.get(addmm_key(t, N, K, dtype, M))
    return None if c is None else c.kwargs["BLOCK_SIZE_M"]
def launch(M, N=512, K=3584):  # FlagGems' own argument order: no benchmark allowed
    return launch_kwargs(t, runtime_args(t, M, N, K, "bf16"))["BLOCK_SIZE_M"]
"""


def _code(body: str) -> str:
    return LIBTUNER_LAUNCH + RECORDS.format(env=env_of()) + body


def test_seed_then_lookup_in_process_and_in_a_fresh_one(fg_env):
    r = result(run_py(_code("""
RECS = [rec(1, 512, 3584, 32, 64, 32, 2, 5),        # FlagGems' own list
        rec(256, 512, 3584, 16, 64, 128, 4, 3),     # off-list: no pre_hook needed
        rec(256, 512, 3584, 64, 64, 64, 4, 3, bt=0),  # same cache key as the BT=1 one: shadowed
        rec(2048, 3584, 3584, 128, 128, 32, 4, 4),
        rec(16, 512, 3584, 64, 64, 64, 4, 3, kernel="mm")]  # not addmm: ignored
n_configs = len(t.configs)
r = seed_addmm_cache(RECS, max_tokens=300, running=RUNNING)
print("RESULT", json.dumps({
    "records": r.records, "rows": r.rows, "appended": r.appended_configs, "skipped": r.skipped,
    "n_configs": [n_configs, len(t.configs)], "table": t.config_table_name,
    "key": list(addmm_key(t, 512, 3584, "bf16", 1)),
    "kv": [bm(M) for M in (1, 16, 32, 33, 64, 300)],
    "q": [bm(M, 3584) for M in (1, 300)], "fp16_miss": bm(1, dtype="fp16"),
    "launch": [launch(5), launch(200)]}))
"""), fg_env))
    assert r["records"] == 3 and r["appended"] == 0 and r["n_configs"] == [8, 8]
    assert len(r["skipped"]) == 1 and "BT=0 shadowed" in r["skipped"][0]
    # FlagGems' key: align32 of M, N, K, then the dtypes of A, B, bias, out
    assert r["key"] == [32, 512, 3584] + ["torch.bfloat16"] * 4
    # align32 buckets: 1..32 -> tuned M=1; 33..64 (middle ~46) is nearer 256 than 1 in log space
    assert r["kv"] == [32, 32, 32, 16, 16, 16]
    assert r["q"] == [128, 128] and r["fp16_miss"] is None  # one tuned M serves every M
    assert r["rows"] == {next(iter(r["rows"])): 2 * 10} and next(iter(r["rows"])).startswith(r["table"] + "-")
    assert r["launch"] == [32, 16]  # cache hits through LibTuner.run, no benchmark

    r2 = result(run_py(_code("""
print("RESULT", json.dumps({"hit": [bm(7), bm(299), bm(150, 3584)], "miss": bm(7, 4096),
                            "launch": launch(290)}))
"""), fg_env))
    assert r2 == {"hit": [32, 16, 128], "miss": None, "launch": 16}


def test_bucketing_matches_mm(fg_env):
    """For the same tuned Ms, every runtime M gets the same tuned M from addmm's seeder as from
    mm's (both FlagGems keys round M with align32)."""
    r = result(run_py(_code("""
from tuner.inject.flaggems_cache import _runtime_args, locate_mm_module, locate_mm_tuners, seed_mm_cache
TUNED = {1: 16, 16: 32, 64: 64, 512: 128, 2048: 256}  # tuned M -> BLOCK_SIZE_M, as a label
seed_addmm_cache([rec(M, 4608, 3584, b, 32, 32, 8, 3) for M, b in TUNED.items()], max_tokens=4096,
                 running=RUNNING)
mm_recs = [{"kernel": "mm", "key": {"M": M, "N": 4608, "K": 3584}, "dtype": "bf16",
            "config": {"variant": "fg_tma", "BLOCK_M": b, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8,
                       "SPLIT_K": 1, "num_warps": 8, "num_stages": 3},
            "environment": ENV, "kernel_source_hash": __import__("tuner.inject.flaggems_cache",
                fromlist=["x"]).fg_kernel_source_hash("fg_tma")} for M, b in TUNED.items()]
seed_mm_cache(mm_recs, max_tokens=4096, running=RUNNING, b_layouts=("col",))
tm, mod = locate_mm_tuners()["fg_tma"], locate_mm_module()
def mm_bm(M):
    return tm.cache.get(tm.get_key(_runtime_args(mod, "fg_tma", M, 4608, 3584, "bf16", "col"))).kwargs["BLOCK_M"]
Ms = list(range(1, 4097, 7)) + [4096]
print("RESULT", json.dumps({"addmm": [bm(M, 4608) for M in Ms], "mm": [mm_bm(M) for M in Ms]}))
"""), fg_env, timeout=300))
    # tuned M=16 shares the 1..32 bucket with M=1, which wins (the decode case): 32 never shows
    assert r["addmm"] == r["mm"] and set(r["addmm"]) == {16, 64, 128, 256}


def test_foreign_and_conflicting_records_refused(fg_env):
    r = result(run_py(_code("""
from tuner.inject import ForeignResultError
res = {}
good = rec(1, 512, 3584, 32, 64, 32, 2, 5)
for name, bad in [("hash", dict(good, kernel_source_hash="0" * 64)),
                  ("gpu", dict(good, environment={**ENV, "gpu_name": "NVIDIA A100-SXM4-80GB"})),
                  ("flag_gems", dict(good, environment={**ENV, "flag_gems": "4.9.0"}))]:
    try:
        seed_addmm_cache([bad], max_tokens=8, running=RUNNING)
        res[name] = "accepted"
    except ForeignResultError as e:
        res[name] = str(e)
try:
    seed_addmm_cache([good, rec(1, 512, 3584, 64, 64, 32, 4, 4)], max_tokens=8, running=RUNNING)
    res["conflict"] = "accepted"
except ValueError as e:
    res["conflict"] = str(e)
res["nothing_written"] = bm(1)
res["forced"] = seed_addmm_cache([dict(good, kernel_source_hash="0")], max_tokens=8, running=RUNNING,
                                 allow_foreign=True).records
print("RESULT", json.dumps(res))
"""), fg_env))
    assert "kernel_source_hash" in r["hash"] and "allow_foreign=True" in r["hash"]
    assert "NVIDIA A100" in r["gpu"] and "4.9.0" in r["flag_gems"]
    assert "two different addmm configs" in r["conflict"]
    assert r["nothing_written"] is None and r["forced"] == 1


def test_seed_another_database(fg_env, tmp_path):
    other = f"sqlite:///{tmp_path / 'serve.db'}"
    r = result(run_py(_code(f"""
r = seed_addmm_cache([rec(64, 1152, 4304, 16, 64, 128, 4, 3)], max_tokens=128, running=RUNNING, db_url={other!r})
print("RESULT", json.dumps({{"records": r.records, "skipped": r.skipped, "live": bm(64, 1152, 4304)}}))
"""), fg_env))
    assert r == {"records": 1, "skipped": [], "live": None}  # the running process's own DB is untouched
    r2 = result(run_py(_code("""
print("RESULT", json.dumps([bm(1, 1152, 4304), bm(100, 1152, 4304), launch(100, 1152, 4304)]))
"""), {**fg_env, "FLAGGEMS_DB_URL": other}))
    assert r2 == [16, 16, 16]  # an off-list config from another process's row: no pre_hook needed

