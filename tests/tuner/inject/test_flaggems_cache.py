"""Seeding FlagGems' LibTuner mm cache, checked with FlagGems' own objects and real SQLite.

Without a GPU the TMA config list has 216 entries instead of the H100's 162, so the
table names here are not the H100's: these tests check internal consistency (what we
write is what FlagGems computes and finds in a fresh process). The only stand-in is
the final JIT launch (`tuner.fn`), replaced by a recorder because nothing can run on CUDA.
"""
import hashlib
import sqlite3

import pytest

from tests.conftest import needs_flag_gems, result, run_py
from tests.tuner.inject.conftest import env_of

pytestmark = needs_flag_gems

RECORDS = """
from tuner.inject.flaggems_cache import fg_kernel_source_hash
ENV = {env!r}
def rec(M, N, K, v, bm, bn, bk, w, s, dtype="bf16", gm=8):
    return {{"kernel": "mm", "key": {{"M": M, "N": N, "K": K}}, "dtype": dtype,
            "config": {{"variant": v, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm,
                        "SPLIT_K": 1, "num_warps": w, "num_stages": s}},
            "environment": ENV, "kernel_source_hash": fg_kernel_source_hash(v) if v != "splitk" else "x"}}
RECS = [
    rec(1, 4608, 3584, "fg_tma", 64, 128, 64, 4, 3),      # in FlagGems' TMA list
    rec(256, 4608, 3584, "fg_tma", 128, 128, 128, 8, 5),  # off-list (5 stages)
    rec(16, 100, 36, "fg_general", 64, 64, 64, 4, 5),     # N, K not multiples of 8 -> general
    rec(16, 4608, 3584, "fg_general", 64, 64, 64, 4, 5),  # unreachable: TMA shape
    rec(16, 4608, 3584, "splitk", 64, 64, 64, 4, 5),      # not FlagGems' business
]
RUNNING = {{"gpu_name": ENV["gpu_name"], "triton": ENV["triton"], "flag_gems": ENV["flag_gems"]}}
"""
HELPERS = """
import json
from tuner.inject.flaggems_cache import locate_mm_module, locate_mm_tuners, _runtime_args, seed_mm_cache
mod = locate_mm_module(); tuners = locate_mm_tuners()
def key(v, M, N, K, layout="col", dtype="bf16"):
    return tuners[v].get_key(_runtime_args(mod, v, M, N, K, dtype, layout))
def cfg(c):
    return None if c is None else {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
def launch(v, M, N, K):
    # LibTuner.run's lookup path up to the JIT launch: no benchmark may happen
    t = tuners[v]
    def no_bench(*a, **k):
        raise AssertionError("LibTuner benchmarked: cache miss")
    class Launch:  # stands in for the CUDA launch only
        def run(self, *args, **kwargs):
            self.kwargs = kwargs
    t._bench, t.fn = no_bench, Launch()
    a = _runtime_args(mod, v, M, N, K, "bf16", "col")
    names = t.arg_names[:12]
    t.run(*[a[n] for n in names], **{k: a[k] for k in a if k not in names})
    hooked = a["a_desc"].block_shape if v == "fg_tma" else None
    return {"BLOCK_M": t.fn.kwargs["BLOCK_M"], "block_shape": hooked,
            "pre_hook": t.best_config.pre_hook is not None}
"""


def _env():
    return env_of()


def test_seed_in_process_and_fresh_process_lookup(fg_env, tmp_path):
    out = run_py(RECORDS.format(env=_env()) + HELPERS + """
        r = seed_mm_cache(RECS, max_tokens=300, running=RUNNING)
        t = tuners["fg_tma"]
        print("RESULT", json.dumps({
            "records": r.records, "rows": r.rows, "appended": r.appended_configs, "skipped": r.skipped,
            "tables": {v: tt.config_table_name for v, tt in tuners.items()},
            "n_configs": len(t.configs),
            "hits": [cfg(t.cache.get(key("fg_tma", M, 4608, 3584, lay)))["BLOCK_M"]
                     for lay in ("row", "col") for M in (1, 16, 32, 33, 300)],
            "key": list(key("fg_tma", 1, 4608, 3584)),
            "general": [cfg(tuners["fg_general"].cache.get(key("fg_general", M, 100, 36))) for M in (1, 300)],
            "launch_listed": launch("fg_tma", 5, 4608, 3584),
            "launch_offlist": launch("fg_tma", 300, 4608, 3584)}))
    """.replace("\n        ", "\n"), fg_env)
    r = result(out)
    assert r["records"] == 3 and r["appended"] == 1
    assert len(r["skipped"]) == 1 and "dispatches this shape to fg_tma" in r["skipped"][0]
    assert r["n_configs"] == 217  # 216 without a GPU (162 on an H100) + the off-list one
    # align32 buckets: 1..32 holds tuned M=1; 33..64 (middle ~46) is nearer 256 than 1 in log
    assert r["hits"] == [64, 64, 64, 128, 128] * 2
    assert r["key"] == [32, 4608, 3584, 3584, 32, "bfloat16"]  # FlagGems' align32 key + dtype
    assert r["general"] == [{"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 5}] * 2
    # a cache hit: no benchmark, config used with its TMA pre_hook (descriptor block set)
    assert r["launch_listed"] == {"BLOCK_M": 64, "block_shape": [64, 64], "pre_hook": True}
    assert r["launch_offlist"] == {"BLOCK_M": 128, "block_shape": [128, 128], "pre_hook": True}

    # physical table names are FlagGems' scheme: <fn>_<kernel_hash>-<md5 of key columns>
    db = fg_env["FLAGGEMS_DB_URL"].removeprefix("sqlite:///")
    names = {n for (n,) in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
    tma = r["tables"]["fg_tma"] + "-" + hashlib.md5("".join(f"key_{i}" for i in range(6)).encode()).hexdigest()
    gen = r["tables"]["fg_general"] + "-" + hashlib.md5("".join(f"key_{i}" for i in range(8)).encode()).hexdigest()
    assert names == {tma, gen} and set(r["rows"]) == names
    assert r["rows"][tma] == 2 * 10  # 2 layouts x 10 align32 buckets up to M=300
    assert r["rows"][gen] == 2 * 300  # default strategy: every M

    # a fresh process finds the rows through FlagGems' own lookup, without seeding again
    out = run_py(HELPERS + """
        t = tuners["fg_tma"]
        print("RESULT", json.dumps({"hit": cfg(t.cache.get(key("fg_tma", 7, 4608, 3584))),
                                    "miss": cfg(t.cache.get(key("fg_tma", 7, 4608, 4096))),
                                    "launch": launch("fg_tma", 7, 4608, 3584)}))
    """.replace("\n        ", "\n"), fg_env)
    r2 = result(out)
    assert r2["hit"] == {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
    assert r2["miss"] is None
    assert r2["launch"] == {"BLOCK_M": 64, "block_shape": [64, 64], "pre_hook": True}


def test_seed_other_db_skips_offlist_tma(fg_env, tmp_path):
    other = f"sqlite:///{tmp_path / 'serve.db'}"
    out = run_py(RECORDS.format(env=_env()) + HELPERS + f"""
r = seed_mm_cache(RECS[:2], max_tokens=64, running=RUNNING, db_url={other!r})
print("RESULT", json.dumps({{"records": r.records, "appended": r.appended_configs, "skipped": r.skipped,
                            "live_hit": tuners["fg_tma"].cache.get(key("fg_tma", 1, 4608, 3584)) is not None}}))
""", fg_env)
    r = result(out)
    assert r["records"] == 1 and r["appended"] == 0 and "off-list" in r["skipped"][0]
    assert not r["live_hit"]  # the running process's own DB is untouched
    out = run_py(HELPERS + """
print("RESULT", json.dumps(cfg(tuners["fg_tma"].cache.get(key("fg_tma", 20, 4608, 3584, "row")))))
""", {**fg_env, "FLAGGEMS_DB_URL": other})
    assert result(out)["BLOCK_N"] == 128


def test_a_key_tuned_in_both_b_layouts_seeds_each_layout_its_own_config(fg_env):
    """The resampler's 640x3584x3584 is met as x @ P (B row-major, BT=0) and as a Linear (BT=1); both
    tuned to FlagGems' TMA kernel with different configs: each layout's cache rows get their own (the
    H200 engine refused to start on such a database: "two different mm configs")."""
    out = run_py(RECORDS.format(env=_env()) + HELPERS + """
kn = rec(640, 3584, 3584, "fg_tma", 64, 128, 64, 4, 3); kn["key"]["BT"] = 0
nk = rec(640, 3584, 3584, "fg_tma", 128, 128, 128, 8, 5); nk["key"]["BT"] = 1
lone = rec(1, 3584, 3584, "fg_tma", 64, 128, 64, 4, 3)  # one layout tuned: both layouts take it
r = seed_mm_cache([kn, nk, lone], max_tokens=1024, running=RUNNING)
t = tuners["fg_tma"]
print("RESULT", json.dumps({"records": r.records, "skipped": r.skipped,
    "row": [cfg(t.cache.get(key("fg_tma", M, 3584, 3584, "row")))["BLOCK_M"] for M in (1, 600, 640, 1024)],
    "col": [cfg(t.cache.get(key("fg_tma", M, 3584, 3584, "col")))["BLOCK_M"] for M in (1, 600, 640, 1024)]}))
""", fg_env)
    r = result(out)
    assert r["records"] == 3 and r["skipped"] == []
    assert r["row"] == [64, 64, 64, 64] and r["col"] == [64, 128, 128, 128]


def test_foreign_records_refused(fg_env):
    out = run_py(RECORDS.format(env=_env()) + HELPERS + """
from tuner.inject import ForeignResultError
import warnings
res = {}
bad_hash = dict(RECS[0], kernel_source_hash="0" * 64)
other_gpu = dict(RECS[0], environment={**RECS[0]["environment"], "gpu_name": "NVIDIA A100-SXM4-80GB"})
for name, rec in [("hash", bad_hash), ("gpu", other_gpu)]:
    try:
        seed_mm_cache([rec], max_tokens=8, running=RUNNING)
        res[name] = "accepted"
    except ForeignResultError as e:
        res[name] = str(e)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    res["forced"] = seed_mm_cache([bad_hash], max_tokens=8, running=RUNNING, allow_foreign=True).records
    res["warned"] = any("FOREIGN" in str(x.message) for x in w)
res["no_gpu_here"] = None
try:
    seed_mm_cache(RECS[:1], max_tokens=8)  # detected environment: this host has no GPU
except ForeignResultError as e:
    res["no_gpu_here"] = str(e)
print("RESULT", json.dumps(res))
""", fg_env)
    r = result(out)
    assert "kernel_source_hash" in r["hash"] and "allow_foreign=True" in r["hash"]
    assert "NVIDIA A100" in r["gpu"]
    assert r["forced"] == 1 and r["warned"]
    assert "running None" in r["no_gpu_here"]


def test_config_must_be_reproducible_by_flaggems(fg_env):
    out = run_py(RECORDS.format(env=_env()) + HELPERS + """
try:
    seed_mm_cache([rec(1, 4608, 3584, "fg_tma", 64, 128, 64, 4, 3, gm=4)], max_tokens=8, running=RUNNING)
    msg = "accepted"
except ValueError as e:
    msg = str(e)
print("RESULT", json.dumps(msg))
""", fg_env)
    assert "GROUP_M=8" in result(out)


@pytest.mark.gpu
def test_seeded_mm_runs_without_autotuning_on_hopper(tmp_path):
    """On a Hopper GPU (H100, H200): seeded keys are hits for real torch.mm calls through FlagGems (no benchmark).
    A miss records the key FlagGems computed and whether the seeded table holds it."""
    out = run_py("""
import json, sqlite3, torch, triton, flag_gems
from tuner.inject.flaggems_cache import fg_kernel_source_hash, locate_mm_tuners, seed_mm_cache
from tuner.inject.foreign import running_environment
env = running_environment()
recs = [{"kernel": "mm", "key": {"M": M, "N": 4608, "K": 3584}, "dtype": "bf16",
         "config": {"variant": "fg_tma", "BLOCK_M": bm, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8,
                    "SPLIT_K": 1, "num_warps": 4, "num_stages": s},
         "environment": env, "kernel_source_hash": fg_kernel_source_hash("fg_tma")}
        for M, bm, s in [(1, 64, 3), (256, 128, 5)]]  # the second config is off-list
t = locate_mm_tuners()["fg_tma"]
n_configs = len(t.configs)
report = seed_mm_cache(recs, max_tokens=512)
class Benchmarked(Exception):
    pass
def no_bench(*a, **k):
    raise Benchmarked()
t._bench = no_bench
seen = []
get_key = t.get_key
t.get_key = lambda args: seen.append(get_key(args)) or seen[-1]
w = torch.randn(4608, 3584, device="cuda", dtype=torch.bfloat16)
got, misses, outs = {}, {}, {}
with flag_gems.use_gems():
    for M in (1, 7, 300):
        x = torch.randn(M, 3584, device="cuda", dtype=torch.bfloat16)
        try:
            outs[M] = (x, torch.mm(x, w.t()))  # a Linear's layout: B = weight.t()
        except Benchmarked:
            misses[M] = {"key": repr(seen[-1]) if seen else None, "in_memory": seen[-1] in t.cache if seen else None}
            continue
        got[M] = t.best_config.kwargs["BLOCK_M"]
for x, y in outs.values():  # the fp32 reference outside use_gems: FlagGems' mm would autotune it
    torch.testing.assert_close(y.float(), x.float() @ w.float().t(), atol=0.5, rtol=2e-2)
try:
    cached = [repr(k) for k in list(t.cache)[:3]]
except Exception as e:  # the cache object may not iterate
    cached = repr(e)
print("RESULT", json.dumps({"n_configs": n_configs, "got": got, "misses": misses, "rows": report.rows,
                            "skipped": report.skipped, "cached_keys": cached}, default=str))
""", {"FLAGGEMS_DB_URL": f"sqlite:///{tmp_path / 'c.db'}"}, timeout=600)
    r = result(out)
    assert not r["misses"], r
    assert r["n_configs"] == 162, r  # Hopper's shared-memory-filtered TMA list (H100 and H200: 228 KB)
    assert r["got"] == {"1": 64, "7": 64, "300": 128}
