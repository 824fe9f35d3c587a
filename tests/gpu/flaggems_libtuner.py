"""The GPU-test template of FlagGems' LibTuner ops (addmm, bmm: kernels.flaggems_ops.LibTunerKernel),
for tests/gpu/test_addmm_gpu.py and tests/gpu/test_bmm_gpu.py.

Each test runs in a fresh interpreter (FlagGems cannot run under TRITON_INTERPRET=1, which the
CPU mm tests set in this process), with its own FlagGems cache database.
"""

import pytest
import torch

from tests.conftest import result, run_py

ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def gpu_env(tmp_path) -> dict[str, str]:
    return {"FLAGGEMS_DB_URL": f"sqlite:///{tmp_path / 'fg.db'}", "HOME": str(tmp_path)}


# For every key, every config of FlagGems' list and the off-list ones that are valid: the runner's
# output, and flag_gems' own op with that config put in its LibTuner cache (no benchmark allowed).
_BIT_FOR_BIT = """
import json, torch, triton
from kernels import get_kernel
from kernels.{op} import CONFIG_KEYS, as_config, flag_gems_{op}_module
from kernels.flaggems_ops import libtuner
from tuner.inject.flaggems_{op} import {op}_key
k = get_kernel("{op}")
fg = flag_gems_{op}_module()
entry = fg.{op}_kernel
t = libtuner(entry)
def no_bench(*a, **kw):
    raise AssertionError("benchmarked")
t._bench = no_bench
cfgs = [as_config(c) for c in t.configs] + {off!r}
rows = []
for key in {keys!r}:
    {unpack} = key
    inputs = k.make_inputs(key, "bf16", "cuda", 1, seed=0)
    ref = k.reference(inputs.sets[0])
    for c in cfgs:
        if k.invalid_reason(key, c, "bf16", "cuda") is not None:
            continue
        ours = k.runner(key, c, "bf16", "cuda")(inputs.sets[0], torch.full(inputs.outs[0].shape, float("nan"), device="cuda", dtype=torch.bfloat16))
        t.cache[{cache_key}] = triton.Config(
            {{n: c[n] for n in CONFIG_KEYS[:-2]}}, num_warps=c["num_warps"], num_stages=c["num_stages"])
        for d in entry.kernel_cache:
            d.clear()  # LibEntry caches the binary per argument specialisation, not per config
        theirs = fg.{op}(*inputs.sets[0])
        torch.cuda.synchronize()
        err = ((ours.float() - ref).norm() / ref.norm()).item()
        rows.append([list(key), c, torch.equal(ours, theirs), err])
print("RESULT", json.dumps(rows))
"""


def check_runner_is_flaggems(tmp_path, op: str, *, keys: list[tuple], off: list[dict], unpack: str,
                             cache_key: str, min_rows: int) -> None:
    """The runner of `op` gives flag_gems' output bit for bit, within 1e-2 of the reference, for
    at least `min_rows` (key, config) pairs. `unpack` names the key's fields for `cache_key`, the
    LibTuner key expression (over t, the LibTuner, and those names)."""
    code = _BIT_FOR_BIT.format(op=op, keys=keys, off=off, unpack=unpack, cache_key=cache_key)
    r = result(run_py(code, gpu_env(tmp_path), timeout=600))
    assert len(r) >= min_rows
    for key, c, same, err in r:
        assert same, (key, c)
        assert err < 1e-2, (key, c, err)


_TUNE = """
import json
from db import open_database, queries
from tuner.tuning.flow import TuneRequest, tune
url = "sqlite:///{db}"
(res,) = tune(TuneRequest(op="{op}", shapes=["{shape}"], trials={trials}, device="cuda", seed=0, db_url=url))
o = res.outcome
with open_database(url).session() as s:
    (row,) = queries.best_configs(s, kernel="{op}")
    rec = queries.records([row])[0]
print("RESULT", json.dumps({{"stored": res.stored, "timing": o.timing, "baselines": o.setup.baselines_us,
                            "errors": o.setup.baseline_errors, "best_us": o.best_us, "rec": rec}}, default=str))
"""


def tune_one_key(tmp_path, op: str, shape: str, trials: int, variants: tuple[str, ...]) -> dict:
    """`tuner tune` of one key end to end; checks what every tuned key must satisfy (the winner one
    of `variants`) and returns the stored record."""
    code = _TUNE.format(db=tmp_path / "t.db", op=op, shape=shape, trials=trials)
    r = result(run_py(code, gpu_env(tmp_path), timeout=600))
    assert r["stored"] and r["timing"] == "cuda-graph"
    assert set(r["baselines"]) == {"native", "untuned"} and not r["errors"]
    # FlagGems' own untuned pick is the warm start: the best is never worse than it (+noise)
    assert r["best_us"] <= r["baselines"]["untuned"] * 1.05
    rec = r["rec"]
    assert rec["config"]["variant"] in variants and rec["rel_error"] < 1e-2, rec
    assert rec["untuned_us"] > 0 and rec["native_us"] > 0 and len(rec["kernel_source_hash"]) == 64
    return rec


def seeded(op: str, records: list[tuple[dict, dict]], max_tokens: int) -> str:
    """Code that seeds FlagGems' `op` cache with a bf16 record of this GPU per (key, config) and
    leaves `t` (the LibTuner) unable to benchmark: only cache hits may run after it."""
    return f"""
import json, torch, flag_gems
from tuner.inject.flaggems_{op} import {op}_source_hash, locate_{op}_tuner, seed_{op}_cache
from tuner.inject.foreign import running_environment
env = running_environment()
recs = [{{"kernel": "{op}", "key": key, "dtype": "bf16", "config": config, "environment": env,
          "kernel_source_hash": {op}_source_hash()}} for key, config in {records!r}]
t = locate_{op}_tuner()
report = seed_{op}_cache(recs, max_tokens={max_tokens})
t._bench = None  # a benchmark would raise: only cache hits may run
"""
