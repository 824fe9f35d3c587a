"""Seeding FlagGems' flash-attention autotuner (real flag_gems on the CPU, in a subprocess).

The key is checked end to end: FlagGems' own mha_fwd builds the launch arguments (its device
checks and the final launch stubbed, since nothing runs on CUDA here) and Triton's own
Autotuner.run looks them up; only the JIT layer below it is a recorder. A key that missed the
cache would make Autotuner.run benchmark, which is refused here."""
import textwrap

import pytest

from tests.conftest import needs_flag_gems, result, run_py
from tests.tuner.inject.conftest import env_of
from tuner.inject.attention_cache import select_records

ENV = env_of()
RUNNING = {"gpu_name": ENV["gpu_name"], "triton": ENV["triton"], "flag_gems": ENV["flag_gems"]}


def rec(key, bm=64, bn=64, w=4, s=3, dtype="bf16", env=ENV, src="HASH"):
    names = ("batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim", "causal")
    return {"kernel": "attention", "key": dict(zip(names, key)), "dtype": dtype,
            "config": {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s},
            "environment": env, "kernel_source_hash": src}


def test_selection_rule_most_work_per_head_dim_and_dtype():
    recs = [rec((1, 28, 4, 512, 512, 128, 1), bm=16), rec((1, 28, 4, 2048, 2048, 128, 1), bm=32),
            rec((64, 28, 4, 1, 2048, 128, 0), bm=64),  # 3.7M pairs x heads vs prefill's 58.7M
            rec((10, 16, 16, 1024, 1024, 72, 0), bm=128),  # d 72 runs padded to 96
            rec((1, 16, 16, 96, 96, 96, 0), bm=256),
            rec((1, 28, 4, 512, 512, 128, 1), dtype="fp16"),
            {"kernel": "mm", "key": {"M": 1}, "dtype": "bf16"}]
    chosen = select_records(recs)
    assert sorted(chosen) == [(96, "bf16"), (128, "bf16"), (128, "fp16")]
    assert chosen[128, "bf16"]["config"]["BLOCK_M"] == 32
    assert chosen[96, "bf16"]["config"]["BLOCK_M"] == 128
    assert select_records(list(reversed(recs))) == chosen  # order does not matter
    # causal work counts attended pairs: 1500 non-causal (2.25M) beats 2048 causal (2.1M)
    pair = [rec((1, 1, 1, 2048, 2048, 64, 1), bm=16), rec((1, 1, 1, 1500, 1500, 64, 0), bm=32)]
    assert select_records(pair)[64, "bf16"]["config"]["BLOCK_M"] == 32


CAPTURE = """
import contextlib, json, types, warnings
import torch
import flag_gems.ops.flash_api as fa
from kernels.attention import Attention, autotuner, runtime_key
from tuner.inject.attention_cache import seed_attention_cache
from tuner.inject.foreign import ForeignResultError
from tests.tuner.inject.test_attention_cache import rec, RUNNING
SRC = Attention().source_hash()
captured = {}
class Capture:  # stands in for flash_fwd_kernel's launch inside mha_fwd
    def __getitem__(self, grid):
        return lambda *args: captured.__setitem__("args", args)
class NoGpu:
    def device(self, d): return contextlib.nullcontext()
    def get_device_properties(self, d): return types.SimpleNamespace(multi_processor_count=132)
fa.CHECK_DEVICE, fa.torch_device_fn, real = (lambda x: None), NoGpu(), fa.flash_fwd_kernel
def launch_args(b, h, hk, sq, sk, d, dtype=torch.bfloat16, causal=False):
    fa.flash_fwd_kernel = Capture()
    q = torch.zeros(b, sq, h, d, dtype=dtype)
    kv = torch.zeros(b, sk, hk, d, dtype=dtype)
    fa.mha_fwd(q, kv, kv, None, None, 0.0, d ** -0.5, causal, -1, -1, 0.0, False, disable_splitkv=True)
    fa.flash_fwd_kernel = real
    return captured.pop("args")
tuner = autotuner()
class Recorder:  # the heuristics/JIT layer below the autotuner
    def run(self, *args, **kw):
        self.kw = kw
def lookup(args):
    tuner.fn = rec_ = Recorder()
    def no_bench(*a, **kw):
        raise AssertionError("Autotuner.run benchmarked: the seeded key was missed")
    tuner._bench = no_bench
    tuner.run(*args, grid=None, warmup=False)
    return {k: rec_.kw[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "PRE_LOAD_V")}
"""


@needs_flag_gems
def test_seeded_config_is_what_flaggems_looks_up(fg_env):
    out = run_py(CAPTURE + textwrap.dedent("""
        real.kernel_cache = ({"stale": "compiled before seeding"},)  # one per GPU; none here
        recs = [rec((1, 28, 4, 2048, 2048, 128, 1), bm=64, bn=128, w=8, s=2, src=SRC),  # listed config
                rec((1, 28, 4, 512, 512, 128, 1), bm=16, src=SRC),  # less work: not seeded
                rec((10, 16, 16, 1024, 1024, 72, 0), bm=32, bn=16, w=2, s=5, src=SRC),  # off-list
                rec((1, 16, 16, 1500, 1500, 64, 0), bm=64, bn=32, w=4, s=3, dtype="fp16", src=SRC)]
        n = seed_attention_cache(recs, running=RUNNING)
        r = {"n": n, "cache_cleared": not real.kernel_cache[0],
             "keys": sorted(map(list, tuner.cache)),
             # other shapes than the tuned ones, GQA decode swap and 72 -> 96 padding included
             "d128_prefill": lookup(launch_args(2, 28, 4, 300, 300, 128, causal=True)),
             "d128_decode": lookup(launch_args(8, 28, 4, 1, 700, 128)),
             "d96": lookup(launch_args(3, 16, 16, 64, 64, 96)),
             "d64_fp16": lookup(launch_args(1, 16, 16, 100, 100, 64, dtype=torch.float16))}
        try:
            lookup(launch_args(1, 16, 16, 100, 100, 64))  # bf16 d=64 was never seeded
        except AssertionError as e:
            r["unseeded"] = str(e)
        print("RESULT", json.dumps(r))
    """), fg_env)
    r = result(out)
    assert r["n"] == 3 and r["cache_cleared"]
    assert len(r["keys"]) == 3 and sorted(k[0] for k in r["keys"]) == [64, 96, 128]
    want = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2, "PRE_LOAD_V": False}
    assert r["d128_prefill"] == r["d128_decode"] == want
    assert r["d96"] == {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 2, "num_stages": 5, "PRE_LOAD_V": False}
    assert r["d64_fp16"] == {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3, "PRE_LOAD_V": False}
    assert "benchmarked" in r["unseeded"]


@needs_flag_gems
@pytest.mark.parametrize("what", ["gpu", "source"])
def test_foreign_record_is_refused(fg_env, what):
    out = run_py(CAPTURE + textwrap.dedent(f"""
        env = dict(RUNNING, gpu_name="NVIDIA A100-SXM4-80GB") if {what!r} == "gpu" else RUNNING
        src = SRC if {what!r} == "gpu" else "an older flash_kernel.py"
        recs = [rec((1, 16, 16, 1500, 1500, 64, 0), env=env, src=src)]
        r = {{}}
        try:
            seed_attention_cache(recs, running=RUNNING)
        except ForeignResultError as e:
            r["refused"] = str(e)
        r["after_refusal"] = len(tuner.cache)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r["forced"] = seed_attention_cache(recs, allow_foreign=True, running=RUNNING)
            r["warned"] = any("FOREIGN" in str(x.message) for x in w)
        print("RESULT", json.dumps(r))
    """), fg_env)
    r = result(out)
    assert "measured elsewhere" in r["refused"] and ("A100" in r["refused"] if what == "gpu"
                                                      else "kernel_source_hash" in r["refused"])
    assert r["after_refusal"] == 0 and r["forced"] == 1 and r["warned"]
