"""On the H100 (`pytest -m gpu tests/gpu/test_bmm_gpu.py`): FlagGems' bmm tuned and injected.

Each test runs in a fresh interpreter (FlagGems cannot run under TRITON_INTERPRET=1, which the
CPU mm tests set in this process), with its own FlagGems cache database.
"""

import pytest
import torch

from tests.tuner.inject.conftest import result, run_py

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def _env(tmp_path):
    return {"FLAGGEMS_DB_URL": f"sqlite:///{tmp_path / 'fg.db'}", "HOME": str(tmp_path)}


def test_runner_is_flaggems_bmm_bit_for_bit(tmp_path):
    """The runner launches FlagGems' own JIT function with the heuristics' DIVISIBLE flags: with
    the same config seeded into its LibTuner, flag_gems' bmm gives identical outputs, for every
    listed config and two off-list ones, both layouts, and partial tiles."""
    r = result(run_py("""
import json, torch, triton
from kernels import get_kernel
from kernels.bmm import VARIANT, as_config, flag_gems_bmm_module
from kernels.flaggems_ops import libtuner
from tuner.inject.flaggems_bmm import bmm_key
k = get_kernel("bmm")
fg = flag_gems_bmm_module()
entry = fg.bmm_kernel
t = libtuner(entry)
def no_bench(*a, **kw):
    raise AssertionError("benchmarked")
t._bench = no_bench
off = [{"variant": VARIANT, "TILE_M": 16, "TILE_N": 64, "TILE_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 3},
       {"variant": VARIANT, "TILE_M": 64, "TILE_N": 128, "TILE_K": 64, "GROUP_M": 4, "num_warps": 8, "num_stages": 4}]
cfgs = [as_config(c) for c in t.configs] + off
rows = []
for key in [(1024, 10, 3584, 3584, 1), (40, 37, 200, 72, 0), (3, 64, 1024, 128, 0)]:
    B, M, N, K, layout = key
    inputs = k.make_inputs(key, "bf16", "cuda", 1, seed=0)
    a, b = inputs.sets[0]
    ref = k.reference(inputs.sets[0])
    for c in cfgs:
        if k.invalid_reason(key, c, "bf16", "cuda") is not None:
            continue
        ours = k.runner(key, c, "bf16", "cuda")(inputs.sets[0], torch.full((B, M, N), float("nan"), device="cuda", dtype=torch.bfloat16))
        t.cache[bmm_key(t, B, N, K, layout, "bf16", M)] = triton.Config(
            {n: c[n] for n in ("TILE_M", "TILE_N", "TILE_K", "GROUP_M")},
            num_warps=c["num_warps"], num_stages=c["num_stages"])
        for d in entry.kernel_cache:
            d.clear()  # LibEntry caches the binary per argument specialisation, not per config
        theirs = fg.bmm(a, b)
        torch.cuda.synchronize()
        err = ((ours.float() - ref).norm() / ref.norm()).item()
        rows.append([list(key), c, torch.equal(ours, theirs), err])
print("RESULT", json.dumps(rows))
""", _env(tmp_path), timeout=600))
    assert len(r) >= 30
    for key, c, same, err in r:
        assert same, (key, c)
        assert err < 1e-2, (key, c, err)


def test_tune_resampler_key(tmp_path):
    r = result(run_py(f"""
import json
from db import open_database, queries
from tuner.tuning.flow import TuneRequest, tune
url = "sqlite:///{tmp_path / 't.db'}"
(res,) = tune(TuneRequest(op="bmm", shapes=["1024,10,3584,3584,linear"], trials=8, device="cuda", seed=0, db_url=url))
o = res.outcome
with open_database(url).session() as s:
    (row,) = queries.best_configs(s, kernel="bmm")
    rec = queries.records([row])[0]
print("RESULT", json.dumps({{"stored": res.stored, "timing": o.timing, "baselines": o.setup.baselines_us,
                            "errors": o.setup.baseline_errors, "best_us": o.best_us, "rec": rec}}, default=str))
""", _env(tmp_path), timeout=600))
    assert r["stored"] and r["timing"] == "cuda-graph"
    assert set(r["baselines"]) == {"native", "untuned"} and not r["errors"]
    assert r["best_us"] <= r["baselines"]["untuned"] * 1.05
    rec = r["rec"]
    assert rec["config"]["variant"] == "fg_bmm" and rec["rel_error"] < 1e-2
    assert rec["key"] == {"BATCH": 1024, "M": 10, "N": 3584, "K": 3584, "LAYOUT": 1}
    assert rec["untuned_us"] > 0 and rec["native_us"] > 0 and len(rec["kernel_source_hash"]) == 64


def test_seeded_bmm_runs_without_autotuning(tmp_path):
    """A seeded resampler key is a hit for the real nn.MultiheadAttention call (F.linear on a
    sequence-first input reaches bmm with the linear layout): no benchmark, the seeded tile.
    Only the MHA call runs under FlagGems (its other ops would autotune on first use)."""
    r = result(run_py("""
import json, torch, flag_gems
from tuner.inject.flaggems_bmm import bmm_source_hash, locate_bmm_tuner, seed_bmm_cache
from tuner.inject.foreign import running_environment
env = running_environment()
recs = [{"kernel": "bmm", "key": {"BATCH": 1024, "M": M, "N": 3584, "K": 3584, "LAYOUT": 1}, "dtype": "bf16",
         "config": {"variant": "fg_bmm", "TILE_M": tm, "TILE_N": 128, "TILE_K": 64, "GROUP_M": 1,
                    "num_warps": 4, "num_stages": 3},
         "environment": env, "kernel_source_hash": bmm_source_hash()}
        for M, tm in [(1, 16), (10, 32)]]  # both off FlagGems' list
t = locate_bmm_tuner()
report = seed_bmm_cache(recs, max_tokens=64)
t._bench = None  # a benchmark would raise: only cache hits may run
# weights that do not require grad, as in serving (vLLM's, the workload's): with requires_grad
# torch.matmul folds the input into one mm with a copy instead of calling bmm
mha = torch.nn.MultiheadAttention(3584, 28, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
got, inputs = {}, {}
for slices in (1, 2, 10):
    q = torch.randn(64, slices, 3584, device="cuda", dtype=torch.bfloat16)
    # k and v distinct, as in the resampler (one object would take the packed [2E, E] path)
    k, v = (torch.randn(slices, 1024, 3584, device="cuda", dtype=torch.bfloat16).permute(1, 0, 2)
            for _ in range(2))
    inputs[slices] = (q, k, v)
with flag_gems.use_gems(exclude=["layer_norm", "mul"]), torch.no_grad():
    for slices, (q, k, v) in inputs.items():
        t.best_config = None
        mha(q, k, v, need_weights=False)
        got[slices] = t.best_config.kwargs["TILE_M"] if t.best_config is not None else None
print("RESULT", json.dumps({"rows": list(report.rows.values()), "got": got}))
""", _env(tmp_path), timeout=600))
    assert r["rows"] == [7]  # log2 buckets of M in 1..64
    # one slice: matmul views the input as 2-D and calls mm, no bmm at all; two slices take the
    # config tuned at M=1 (nearer in log space than 10)
    assert r["got"] == {"1": None, "2": 16, "10": 32}
