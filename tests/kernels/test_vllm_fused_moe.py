"""vllm_fused_moe: presets, space, M coverage, vLLM's shipped / default configs and its kernel's
source hash on the CPU with the real vllm package; vLLM's own fused_moe_kernel under the Triton
interpreter (vLLM's naive token assignment: the one it computes in plain torch); the full vLLM
path on the GPU (`pytest -m gpu tests/kernels/test_vllm_fused_moe.py`, this file alone)."""

import os

import pytest
import torch

from kernels import REGISTRY, get_kernel
from kernels.base import KernelInputError
from kernels.fused_moe import CONFIG_KEYS, FP8, SPACE, naive_assignment
from kernels.vllm_fused_moe import (
    COVER_RATIO,
    NO_CPU,
    covering,
    kernel_source,
    ms_to_tune,
    shipped_table,
    vllm_default_config,
    vllm_kernel_file,
    vllm_kernel_source_hash,
)
from tests.conftest import needs_vllm, result, run_py
from tuner.tuning.search import grid_configs

MOE = get_kernel("vllm_fused_moe")
H200 = "NVIDIA H200"
BENCH = [(128, 768, 2048, 8), (128, 384, 2048, 8), (8, 14336, 4096, 2), (8, 7168, 4096, 2)]  # issue 16
BENCH_M = (1, 16, 64, 256, 1024, 4096)


def test_registered_before_flaggems_fused_moe():
    ops = list(REGISTRY)
    assert ops.index("vllm_fused_moe") < ops.index("fused_moe")  # vLLM's profiled MoE ops are its
    from tuner.profiling.profiler import tunable_kernel

    assert tunable_kernel("vllm::outplace_fused_experts") == "vllm_fused_moe"
    assert tunable_kernel("_moe_C::moe_sum") == "vllm_fused_moe"


def test_bench_preset_is_issue_16s_shapes():
    p = MOE.presets()
    assert sorted(p["moe-bench"]) == sorted((*s, m) for s in BENCH for m in BENCH_M)
    assert p["qwen3-30b-a3b-serve"] == [(128, 768, 2048, 8, m) for m in (1, 4, 16, 64, 256, 1024, 4096)]


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 100, 512, 8192, 10000, 16384])
def test_ms_to_tune_cover_every_m(max_tokens):
    ms = ms_to_tune(max_tokens)
    assert all(covering(M, ms) is not None for M in range(1, max_tokens + 1))
    assert ms == sorted(ms) and (len(ms) == 1 or covering(max_tokens, ms[:-1]) is None)  # none to spare


def test_covering_is_the_closest_ratio_within_bounds():
    ms = [1, 16, 64, 256]
    assert covering(16, ms) == 16 and covering(32, ms) == 16  # 32/16 == 64/32: the smaller
    assert covering(40, ms) == 64 and covering(512, ms) == 256
    assert covering(3, ms) is None and covering(513, ms) is None and covering(7, ms) is None
    assert covering(8, ms) == 16 and COVER_RATIO == 2


def test_space_and_constraints_are_fused_moes_and_cpu_refuses():
    key = (128, 768, 2048, 8, 64)
    fm = get_kernel("fused_moe")
    assert MOE.space(key, "bf16", "cuda") == fm.space(key, "bf16", "cuda") and set(SPACE) == set(CONFIG_KEYS)
    grid = grid_configs(MOE, key, "bf16", "cuda")
    assert grid == grid_configs(fm, key, "bf16", "cuda") and grid
    assert MOE.invalid_reason(key, grid[0], "fp16", "cpu") == NO_CPU
    assert grid_configs(MOE, key, "fp16", "cpu") == [] and MOE.baselines(key, "fp16", "cpu") == {}
    with pytest.raises(KernelInputError, match="vLLM's fused-MoE path needs its CUDA ops"):
        MOE.runner(key, grid[0], "fp16", "cpu")


# ---- vLLM's shipped and default configs (the installed vllm) ---------------------------------------
@needs_vllm
def test_which_bench_shapes_vllm_ships_for_the_h200():
    """vLLM 0.33 (and 0.26: the same files) ships H200 configs for all four bf16 shapes and for
    Mixtral's fp8_w8a8 ones; none for Qwen3-30B-A3B's fp8_w8a8 with per-tensor scales (only
    block_shape=[128,128] files): there vLLM runs its default config."""
    shipped = {(E, N, dt) for E, N, _, _ in BENCH for dt in ("bf16", FP8) if shipped_table(E, N, H200, dt)}
    assert shipped == {(128, 768, "bf16"), (128, 384, "bf16"), (8, 14336, "bf16"), (8, 7168, "bf16"),
                       (8, 14336, FP8), (8, 7168, FP8)}
    assert sorted(shipped_table(128, 768, "NVIDIA H200 NVL")) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256,
                                                                 512, 1024, 1536, 2048, 3072, 4096]


@needs_vllm
def test_baselines_are_vllms_shipped_and_default_and_points_of_the_space():
    """For every bench key and dtype on an H200: untuned is vLLM's shipped config where one ships,
    else its default; every baseline config is a point of the space the constraints accept (so
    the warm start measures it)."""
    tall = []
    for E, N, K, top_k in BENCH:
        for M in BENCH_M:
            key = (E, N, K, top_k, M)
            for dt in ("bf16", FP8):
                b = MOE.baseline_configs(key, dt, H200, flaggems=False)
                table = shipped_table(E, N, H200, dt)
                assert list(b) == (["untuned", "vllm_shipped", "vllm_default"] if table else ["untuned", "vllm_default"])
                assert b["untuned"] == (b["vllm_shipped"] if table else b["vllm_default"])
                for name, c in b.items():
                    assert all(c[n] in SPACE[n] for n in CONFIG_KEYS), (key, dt, name, c)
                    reason = MOE.invalid_reason(key, MOE.canonical(key, c), dt, "cuda")
                    assert reason is None, (key, dt, name, c, reason)
                    if naive_assignment(key) and c["BLOCK_SIZE_M"] > 16:
                        tall.append((key, dt, name))
    # vLLM ships BLOCK_SIZE_M=64 for Mixtral fp8 at M=1, where FlagGems' fused_moe prunes tall tiles
    assert ((8, 14336, 4096, 2, 1), FP8, "vllm_shipped") in tall
    assert get_kernel("fused_moe").invalid_reason((8, 14336, 4096, 2, 1), shipped_table(8, 14336, H200, FP8)[1],
                                                  FP8, "cuda") is not None


@needs_vllm
def test_default_config_is_vllms_get_default_config(tmp_path):
    """Read in a clean vLLM process (vLLM's CPU platform): its get_default_config for a few keys."""
    keys = [(128, 768, 2048, 8, 1), (8, 14336, 4096, 2, 4096), (128, 384, 2048, 8, 300)]
    out = run_py(f"""
        import json
        from vllm.model_executor.layers.fused_moe.fused_moe import get_default_config
        from kernels.vllm_fused_moe import vllm_default_config
        rows = []
        for E, N, K, top_k, M in {keys!r}:
            for dt in (None, "fp8_w8a8"):
                theirs = get_default_config(M, E, N, K, top_k, dt)
                rows.append([theirs, vllm_default_config((E, N, K, top_k, M), dt or "bf16")])
        print("RESULT", json.dumps(rows))
    """, {"VLLM_TARGET_DEVICE": "cpu"}, timeout=300)
    rows = result(out)
    assert len(rows) == 6
    for theirs, ours in rows:
        assert ours == {k: theirs[k] for k in CONFIG_KEYS}
    assert rows[2][1] != rows[0][1]  # the key matters (M=4096 vs M=1)


# ---- provenance ------------------------------------------------------------------------------------
@needs_vllm
def test_source_hash_is_vllms_fused_moe_kernel_only(tmp_path):
    src = vllm_kernel_file()
    assert src is not None and kernel_source(src).startswith("def fused_moe_kernel(")
    h = vllm_kernel_source_hash()
    assert MOE.source_hash({"BLOCK_SIZE_M": 16}) == MOE.source_hash() == h and len(h) == 64
    text = src.read_text()
    other = tmp_path / "other.py"  # another function of the module edited: same hash
    other.write_text(text.replace("def get_config_file_name(", "def get_config_file_name(  # edited\n", 1))
    assert vllm_kernel_source_hash(other) == h
    kernel = tmp_path / "kernel.py"  # the kernel edited: another hash
    body = kernel_source(src)
    kernel.write_text(text.replace(body, body.replace("accumulator", "acc"), 1))
    assert vllm_kernel_source_hash(kernel) != h
    broken = tmp_path / "none.py"
    broken.write_text("def f():\n    pass\n")
    with pytest.raises(KernelInputError, match="defines no fused_moe_kernel"):
        vllm_kernel_source_hash(broken)


# ---- vLLM's Triton kernel in the interpreter ---------------------------------------------------------
@needs_vllm
def test_vllms_kernel_runs_in_the_interpreter_against_the_reference(tmp_path):
    """vLLM's own fused_moe_kernel (launched by its dispatch_fused_moe_kernel, tokens assigned by
    its _prepare_expert_assignment: the naive path, M*top_k*4 <= E, needs no CUDA op) computes
    both GEMMs of a tiny key; silu_and_mul (a CUDA op in vLLM) and moe_sum are torch here. The
    result matches the kernel module's reference. CUDA_VISIBLE_DEVICES="" makes vLLM keep real
    Triton on a machine without a driver (vLLM's distributed-environment rule)."""
    out = run_py("""
        import json, torch
        import torch.nn.functional as F
        import triton.language as tl
        import vllm.model_executor.layers.fused_moe.fused_moe as fm
        from kernels import get_kernel
        k = get_kernel("vllm_fused_moe")
        res = {"jit": type(fm.fused_moe_kernel).__name__}
        for key, cfg in [((16, 32, 64, 2, 2), dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64)),
                         ((32, 48, 96, 4, 2), dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32))]:
            E, N, K, top_k, M = key
            cfg = {**cfg, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 2}
            x, w1, w2, weights, ids = args = k.make_inputs(key, "fp32", "cpu", 1, seed=3).sets[0]
            sorted_ids, expert_ids, post_pad = fm._prepare_expert_assignment(ids, cfg, M, top_k, E, None)
            flags = dict(compute_type=tl.float32, use_fp8_w8a8=False, use_int8_w8a8=False,
                         use_int8_w8a16=False, use_int4_w4a16=False, per_channel_quant=False)
            c1 = torch.full((M, top_k, 2 * N), float("nan"))
            fm.dispatch_fused_moe_kernel(x, w1, c1, None, None, None, weights, sorted_ids, expert_ids, post_pad,
                                         False, top_k, cfg, **flags)
            c2 = (F.silu(c1[..., :N]) * c1[..., N:]).reshape(M * top_k, N).contiguous()
            c3 = torch.full((M, top_k, K), float("nan"))
            fm.dispatch_fused_moe_kernel(c2, w2, c3, None, None, None, weights, sorted_ids, expert_ids, post_pad,
                                         True, 1, cfg, **flags)
            out = c3.sum(dim=1)
            ref = k.reference(args)
            res[str(key)] = {"naive": sorted_ids is None,
                             "rel": ((out.double() - ref).norm() / ref.norm()).item()}
        print("RESULT", json.dumps(res))
    """, {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "VLLM_TARGET_DEVICE": "cpu"}, timeout=600)
    r = result(out)
    assert r.pop("jit") == "InterpretedFunction", "vLLM replaced Triton with its placeholder"
    assert len(r) == 2
    for key, v in r.items():
        assert v["naive"], key
        assert v["rel"] < 1e-5, (key, v)


# ---- on the GPU --------------------------------------------------------------------------------------
def on_gpu(f):
    f = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                           reason="TRITON_INTERPRET=1 is set (run this file alone)")(f)
    f = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")(f)
    return needs_vllm(pytest.mark.gpu(f))


GPU_KEYS = [(128, 384, 2048, 8, 1), (128, 768, 2048, 8, 64), (8, 7168, 4096, 2, 16), (8, 14336, 4096, 2, 1024)]


def _fused_experts(args, dtype, cfg):
    """vLLM's public path with the config forced, as benchmarks/kernels/benchmark_moe.py runs it."""
    from vllm.model_executor.layers.fused_moe import override_config
    from vllm.model_executor.layers.fused_moe.config import fp8_w8a8_moe_quant_config
    from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts

    x, w1, w2, weights, ids = args[:5]
    quant = fp8_w8a8_moe_quant_config(w1_scale=args[5], w2_scale=args[6]) if dtype == FP8 else None
    with override_config(dict(cfg)):
        return fused_experts(x, w1, w2, weights, ids, quant_config=quant)


@on_gpu
@pytest.mark.parametrize("dtype", ["bf16", FP8])
@pytest.mark.parametrize("key", GPU_KEYS)
def test_runner_is_vllms_fused_experts(key, dtype):
    """The runner computes bit for bit what vLLM's fused_experts does under override_config, with
    vLLM's own choice and a grid config, and within tolerance of the reference."""
    from tuner.tuning.measure import check, wrong_result

    args = MOE.make_inputs(key, dtype, "cuda", 1, seed=5).sets[0]
    grid = grid_configs(MOE, key, dtype, "cuda")
    for cfg in (MOE.untuned_configs(key, dtype, "cuda")[0], grid[len(grid) // 3]):
        want = _fused_experts(args, dtype, cfg)
        out = torch.empty_like(args[0])
        MOE.runner(key, cfg, dtype, "cuda")(args, out)
        torch.cuda.synchronize()
        assert torch.equal(out, want), cfg
        chk = check(MOE, MOE.runner(key, cfg, dtype, "cuda"), MOE.make_inputs(key, dtype, "cuda", 1, seed=7))
        assert wrong_result(MOE, chk, dtype) is None, (cfg, chk)


@on_gpu
@pytest.mark.parametrize("key", [(128, 768, 2048, 8, 16), (8, 14336, 4096, 2, 256)])
def test_baselines_side_by_side_in_vllms_kernel(key):
    from tuner.tuning.measure import check, time_runner, wrong_result

    gpu = torch.cuda.get_device_name()
    base = MOE.baselines(key, "bf16", "cuda")
    names = ["untuned", "vllm_shipped", "vllm_default", "flaggems_default"]
    assert list(base) == [n for n in names if n != "vllm_shipped" or shipped_table(*key[:2], gpu)]
    inputs = MOE.make_inputs(key, "bf16", "cuda", 2, seed=0)
    for name, run in base.items():
        assert wrong_result(MOE, check(MOE, run, inputs), "bf16") is None, name
        us, method = time_runner(run, inputs, "cuda")
        assert method == "cuda-graph" and us > 0, name  # graph-capturable, as vLLM serves it


@on_gpu
def test_tune_end_to_end_records_vllms_kernel(tmp_path):
    from tuner.tuning.flow import TuneRequest, tune

    url = f"sqlite:///{tmp_path / 't.db'}"
    (res,) = tune(TuneRequest(op="vllm_fused_moe", shapes=["128,768,2048,8,16"], trials=10, device="cuda",
                              seed=0, db_url=url))
    o = res.outcome
    assert res.stored and o.timing == "cuda-graph" and not o.setup.baseline_errors
    assert {"untuned", "vllm_default", "flaggems_default"} <= set(o.setup.baselines_us)
    assert o.best_us <= min(o.setup.baselines_us.values()) * 1.05  # the warm start holds every baseline
    from tuner.report import best_records

    [rec] = [r for r in best_records(url, "vllm_fused_moe", None)]
    assert rec["kernel"] == "vllm_fused_moe" and rec["kernel_source_hash"] == vllm_kernel_source_hash()

