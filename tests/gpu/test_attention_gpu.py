"""attention on the H100: `python -m pytest -q -m gpu tests/gpu/test_attention_gpu.py` (this file
alone: other test modules set TRITON_INTERPRET=1, which FlagGems cannot run under)."""

import os

import pytest
import torch
import torch.nn.functional as F

from kernels import get_kernel
from kernels.attention import (
    MINICPMO,
    as_space_config,
    autotuner,
    flaggems_configs,
    flaggems_path,
    forget_choice,
    padded_head_dim,
    runtime_key,
    sdpa_backend,
    triton_config,
)
from tuner.tuning.search import grid_configs

ATT = get_kernel("attention")
VISION, PREFILL = MINICPMO[3], MINICPMO[0]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="TRITON_INTERPRET=1 is set (run this file alone)"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]


def _fg_call(key, args):
    """FlagGems' aten _flash_attention_forward through its own autotuner, as served."""
    import flag_gems.ops.attention as at

    q, k, v, causal = args
    return at.flash_attention_forward(q, k, v, None, None, key[3], key[4], 0.0, causal, False)[0]


@pytest.mark.parametrize("key", MINICPMO)
def test_preset_keys_reach_flash_fwd_kernel(key):
    assert flaggems_path(key, torch.cuda.get_device_properties(0).multi_processor_count) == "flash_fwd"


@pytest.mark.parametrize("key", MINICPMO)
def test_runner_matches_reference(key):
    """FlagGems' own configs and a spread of the grid; a config the compiler finds out of
    resources is what the worker records as failed, never a wrong result."""
    from triton.runtime.errors import OutOfResources

    from tuner.tuning.measure import check

    grid = grid_configs(ATT, key, "bf16", "cuda")
    configs = flaggems_configs() + grid[:: max(1, len(grid) // 8)]
    ran, oor = 0, []
    for c in configs:
        inputs = ATT.make_inputs(key, "bf16", "cuda", 1, seed=7)
        try:
            res = check(ATT, ATT.runner(key, c, "bf16", "cuda"), inputs)
        except OutOfResources:
            oor.append(c)
            continue
        ran += 1
        assert res.rel_error < ATT.tolerance("bf16"), (c, res)
    assert ran >= len(configs) // 2, oor


@pytest.mark.parametrize("key", MINICPMO)
def test_runner_is_flaggems_with_that_config(key):
    """Bit for bit what FlagGems' served path computes once its autotuner holds the config."""
    args = ATT.make_inputs(key, "bf16", "cuda", 1, seed=5).sets[0]
    d = padded_head_dim(key[5])
    try:
        for c in (flaggems_configs()[-1], {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}):
            forget_choice(d, "bf16")
            autotuner().cache[runtime_key(d, "bf16")] = triton_config(c)
            want = _fg_call(key, args)
            out = torch.empty_like(args[0])
            ATT.runner(key, c, "bf16", "cuda")(args, out)
            torch.cuda.synchronize()
            assert as_space_config(autotuner().best_config) == c
            assert torch.equal(out, want), c
    finally:
        forget_choice(d, "bf16")


@pytest.mark.parametrize("key", [VISION, PREFILL, MINICPMO[2]])
def test_baselines_and_untuned_configs(key):
    from tuner.tuning.measure import check, time_runner

    base = ATT.baselines(key, "bf16", "cuda")
    pick = sdpa_backend(key, "bf16")
    assert sdpa_backend(key, "bf16", flash_only=True) == "flash"  # torch's FA2 takes every preset
    assert set(base) == {"native", "untuned"} | ({f"native_{pick}"} if pick != "flash" else set())
    inputs = ATT.make_inputs(key, "bf16", "cuda", 2, seed=0)
    for name, run in base.items():
        assert check(ATT, run, inputs).rel_error < ATT.tolerance("bf16"), name
        us, method = time_runner(run, inputs, "cuda")
        assert method == "cuda-graph" and us > 0, name
    configs = ATT.untuned_configs(key, "bf16", "cuda")
    chosen = autotuner().cache[runtime_key(padded_head_dim(key[5]), "bf16")]
    assert configs[0] == as_space_config(chosen) and len(configs) == 6
    assert all(ATT.invalid_reason(key, c, "bf16", "cuda") is None for c in configs)


def test_seeded_cache_is_used_without_benchmark():
    from tuner.inject.attention_cache import seed_attention_cache
    from tuner.inject.foreign import running_environment

    names = ATT.key_names
    env = running_environment()
    recs = [{"kernel": "attention", "key": dict(zip(names, key)), "dtype": "bf16", "config": cfg,
             "environment": env, "kernel_source_hash": ATT.source_hash()}
            for key, cfg in ((VISION, {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}),
                             (PREFILL, {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}))]
    tuner = autotuner()
    try:
        assert seed_attention_cache(recs) == 2

        def no_bench(*a, **kw):
            raise AssertionError("FlagGems benchmarked a seeded key")

        tuner._bench = no_bench
        # shapes never tuned, with the seeded head dims (72 runs padded to 96, like the vision key),
        # large enough for mha_fwd to take flash_fwd_kernel: on a small grid it takes the split-KV
        # kernel, which never asks the autotuner (and best_config would be a stale one)
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        for key, rec in (((8, 16, 16, 1024, 1024, 72, 0), recs[0]), ((1, 28, 4, 1500, 1500, 128, 1), recs[1])):
            assert flaggems_path(key, sms) == "flash_fwd", key
            args = ATT.make_inputs(key, "bf16", "cuda", 1, seed=3).sets[0]
            tuner.best_config = None
            out = _fg_call(key, args)
            assert tuner.best_config is not None and as_space_config(tuner.best_config) == rec["config"]
            ref = ATT.reference(args)
            assert ((out.float() - ref).norm() / ref.norm()).item() < ATT.tolerance("bf16")
    finally:
        tuner.__dict__.pop("_bench", None)
        forget_choice(96, "bf16")
        forget_choice(128, "bf16")


def test_sdpa_reaches_flaggems_only_on_torchs_flash_backend():
    """With FlagGems' aten op registered, SDPA runs flash_fwd_kernel exactly when torch picks its
    flash backend: not by default on an H100 where torch prefers cuDNN, always under
    sdpa_kernel(FLASH_ATTENTION)."""
    import flag_gems
    import flag_gems.ops.flash_api as fa
    from torch.nn.attention import SDPBackend, sdpa_kernel

    args = ATT.make_inputs(VISION, "bf16", "cuda", 1, seed=1).sets[0]
    q, k, v = (t.transpose(1, 2) for t in args[:3])  # (b, h, s, d) as the model passes them
    calls, real = [], fa.flash_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            calls.append(grid)
            return real[grid]

    pick = sdpa_backend(VISION, "bf16")
    fa.flash_fwd_kernel = Spy()
    try:
        with flag_gems.use_gems(include=["flash_attention_forward"]):  # function names, not aten names
            F.scaled_dot_product_attention(q, k, v)
            by_default = len(calls)
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                out = F.scaled_dot_product_attention(q, k, v)
    finally:
        fa.flash_fwd_kernel = real
    assert by_default == (1 if pick == "flash" else 0), pick
    assert len(calls) == by_default + 1
    ref = ATT.reference(args)
    assert ((out.transpose(1, 2).float() - ref).norm() / ref.norm()).item() < ATT.tolerance("bf16")


def test_tune_end_to_end(tmp_path):
    from tuner.tuning.flow import TuneRequest, tune

    url = f"sqlite:///{tmp_path / 't.db'}"
    (res,) = tune(TuneRequest(op="attention", shapes=["1,16,16,1500,1500,64,0"], trials=10, device="cuda",
                              seed=0, db_url=url))
    o = res.outcome
    assert res.stored and o.timing == "cuda-graph" and not o.setup.baseline_errors and o.confirmed
    assert {"native", "untuned"} <= set(o.setup.baselines_us)
    # FlagGems' own configs are the warm start: the best is never worse than its pick (+noise),
    # both timed side by side after the search
    assert o.best_us <= o.setup.baselines_us["untuned"] * 1.05
