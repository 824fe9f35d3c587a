"""Seeding FlagGems' bmm LibTuner cache, checked with FlagGems' own objects and real SQLite.

As for addmm, the only stand-in is the final JIT launch (`tuner.fn`), replaced by a recorder
because nothing can run on CUDA here: LibTuner.run's key computation and cache lookup run.
"""
from tests.conftest import needs_flag_gems, result, run_py
from tests.tuner.inject.conftest import LIBTUNER_LAUNCH, env_of

pytestmark = needs_flag_gems

RECORDS = """
import json
from tuner.inject.flaggems_bmm import bmm_key, bmm_source_hash, locate_bmm_tuner, runtime_args, seed_bmm_cache
ENV = {env!r}
RUNNING = {{k: ENV[k] for k in ("gpu_name", "triton", "flag_gems")}}
def rec(B, M, N, K, layout, tm, tn=128, tk=32, g=1, w=4, s=3, dtype="bf16", kernel="bmm"):
    return {{"kernel": kernel, "key": {{"BATCH": B, "M": M, "N": N, "K": K, "LAYOUT": layout}}, "dtype": dtype,
            "config": {{"variant": "fg_bmm", "TILE_M": tm, "TILE_N": tn, "TILE_K": tk, "GROUP_M": g,
                        "num_warps": w, "num_stages": s}},
            "environment": ENV, "kernel_source_hash": bmm_source_hash()}}
t = locate_bmm_tuner()
def tm(B, M, N=3584, K=3584, layout=1, dtype="bf16"):
    c = t.cache.get(bmm_key(t, B, N, K, layout, dtype, M))
    return None if c is None else c.kwargs["TILE_M"]
def launch(B, M, N=3584, K=3584, layout=1):
    return launch_kwargs(t, runtime_args(t, B, M, N, K, layout, "bf16"))["TILE_M"]
"""


def _code(body: str) -> str:
    return LIBTUNER_LAUNCH + RECORDS.format(env=env_of()) + body


def test_seed_then_lookup_in_process_and_in_a_fresh_one(fg_env):
    r = result(run_py(_code("""
RECS = [rec(1024, 1, 3584, 3584, 1, 32, tn=32),        # FlagGems' own list (32x32x32, 4 warps, 2 stages)
        rec(1024, 10, 3584, 3584, 1, 16, tk=64),         # off-list
        rec(64, 64, 128, 1024, 0, 64, tn=64, g=2),       # contiguous layout: the batch is not in the key
        rec(8, 64, 128, 1024, 0, 64, tn=64, g=2),        # ... so the smaller batch is shadowed
        rec(16, 10, 3584, 3584, 1, 64, kernel="addmm")]  # not bmm: ignored
RECS[0]["config"]["num_stages"] = 2
n_configs = len(t.configs)
r = seed_bmm_cache(RECS, max_tokens=64, running=RUNNING)
print("RESULT", json.dumps({
    "records": r.records, "rows": r.rows, "appended": r.appended_configs, "skipped": r.skipped,
    "n_configs": [n_configs, len(t.configs)], "table": t.config_table_name,
    "key": list(bmm_key(t, 1024, 3584, 3584, 1, "bf16", 10)),
    "resampler": [tm(1024, M) for M in (1, 2, 3, 9, 10, 16, 64)],
    "other_batch": tm(512, 10), "contiguous": [tm(64, 50, 128, 1024, 0), tm(3, 50, 128, 1024, 0)],
    "launch": [launch(1024, 1), launch(1024, 10)]}))
"""), fg_env))
    assert r["records"] == 3 and r["appended"] == 0 and r["n_configs"] == [12, 12]
    assert len(r["skipped"]) == 1 and "BATCH=64" in r["skipped"][0]
    # FlagGems' key: log2 of M, N, K; align32 of stride_am (= BATCH * K here) and stride_bk (1:
    # the weight's transpose); then the dtypes of A, B, out
    assert r["key"] == [16, 4096, 4096, 1024 * 3584, 32] + ["torch.bfloat16"] * 3
    # log2 buckets 1 | 2 | 3-4 | 5-8 | 9-16 ...: in log space M=2 is nearer 1 (x2) than 10 (x5),
    # the 3-4 bucket (middle ~3.5) nearer 10 (x2.9) than 1 (x3.5)
    assert r["resampler"] == [32, 32, 16, 16, 16, 16, 16]
    assert r["other_batch"] is None  # stride_am carries the batch of the linear layout
    assert r["contiguous"] == [64, 64]
    # 7 log2 buckets of M in 1..64 per group, two groups
    assert list(r["rows"].values()) == [14] and next(iter(r["rows"])).startswith(r["table"] + "-")
    assert r["launch"] == [32, 16]  # cache hits through LibTuner.run, no benchmark

    r2 = result(run_py(_code("""
print("RESULT", json.dumps({"hit": [tm(1024, 6), tm(1024, 1)], "miss": tm(1024, 6, dtype="fp16"),
                            "launch": launch(1024, 7)}))
"""), fg_env))
    assert r2 == {"hit": [16, 32], "miss": None, "launch": 16}


def test_foreign_and_conflicting_records_refused(fg_env):
    r = result(run_py(_code("""
from tuner.inject import ForeignResultError
res = {}
good = rec(1024, 10, 3584, 3584, 1, 16)
for name, bad in [("hash", dict(good, kernel_source_hash="0" * 64)),
                  ("gpu", dict(good, environment={**ENV, "gpu_name": "NVIDIA A100-SXM4-80GB"}))]:
    try:
        seed_bmm_cache([bad], max_tokens=8, running=RUNNING)
        res[name] = "accepted"
    except ForeignResultError as e:
        res[name] = str(e)
try:
    seed_bmm_cache([good, rec(1024, 10, 3584, 3584, 1, 64)], max_tokens=8, running=RUNNING)
    res["conflict"] = "accepted"
except ValueError as e:
    res["conflict"] = str(e)
res["nothing_written"] = tm(1024, 10)
res["none"] = seed_bmm_cache([], running=RUNNING).records
print("RESULT", json.dumps(res))
"""), fg_env))
    assert "kernel_source_hash" in r["hash"] and "NVIDIA A100" in r["gpu"]
    assert "two different bmm configs" in r["conflict"]
    assert r["nothing_written"] is None and r["none"] == 0
