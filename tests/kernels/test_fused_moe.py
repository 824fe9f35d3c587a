"""fused_moe: key, space, constraints, reference and inputs on the CPU; the FlagGems runner and
baselines on the H100 (`pytest -m gpu tests/kernels/test_fused_moe.py`, this file alone: other
test modules set TRITON_INTERPRET=1, which FlagGems cannot run under)."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from kernels import get_kernel
from kernels.base import KernelInputError
from kernels.fused_moe import (
    CONFIG_KEYS,
    FP8,
    NO_CPU,
    SPACE,
    m_blocks,
    naive_assignment,
    vllm_config_path,
    vllm_shipped_config,
)
from tests.conftest import H100, flaggems_env, needs_flag_gems, needs_vllm, result, run_py
from tuner.tuning.search import grid_configs

MOE = get_kernel("fused_moe")
QWEN_TP2 = (128, 384, 2048, 8)
MIXTRAL_TP2 = (8, 7168, 4096, 2)


def cfg(**kw):
    return {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
            "num_stages": 3} | kw


# ---- keys -------------------------------------------------------------------------------
def test_parse_key():
    assert MOE.parse_key("128,768,2048,8,16") == (128, 768, 2048, 8, 16)
    for bad in ("128,768,2048,8", "8,14336,4096,16,1", "a,b,c,d,e", "0,1,1,1,1"):
        with pytest.raises(KernelInputError):
            MOE.parse_key(bad)


def test_presets():
    p = MOE.presets()
    assert set(p) == {"qwen3-30b-a3b", "mixtral-8x7b"}
    assert len(p["qwen3-30b-a3b"]) == len(p["mixtral-8x7b"]) == 12
    assert (128, 768, 2048, 8, 1) in p["qwen3-30b-a3b"] and (*QWEN_TP2, 4096) in p["qwen3-30b-a3b"]
    assert (8, 14336, 4096, 2, 64) in p["mixtral-8x7b"] and (*MIXTRAL_TP2, 1024) in p["mixtral-8x7b"]


# ---- space and constraints ----------------------------------------------------------------
def test_space_contains_vllms_tuner_grid():
    vllm_grid = {"BLOCK_SIZE_M": {16, 32, 64, 128, 256}, "BLOCK_SIZE_N": {32, 64, 128, 256},
                 "BLOCK_SIZE_K": {64, 128, 256}, "GROUP_SIZE_M": {1, 16, 32, 64}, "num_warps": {4, 8},
                 "num_stages": {2, 3, 4, 5}}
    space = MOE.space((*QWEN_TP2, 64), "bf16", "cuda")
    assert set(space) == set(CONFIG_KEYS)
    for name, values in vllm_grid.items():
        assert values <= set(space[name]), name


def test_grid_is_nonempty_valid_and_canonical():
    for key in [k for keys in MOE.presets().values() for k in keys]:
        grid = grid_configs(MOE, key, "bf16", "cuda")
        assert grid, key
        for c in grid[:: max(1, len(grid) // 50)]:
            assert MOE.invalid_reason(key, c, "bf16", "cuda") is None and MOE.canonical(key, c) == c


def test_cpu_has_no_implementation():
    key = (*QWEN_TP2, 16)
    assert MOE.invalid_reason(key, cfg(), "fp16", "cpu") == NO_CPU
    assert grid_configs(MOE, key, "fp16", "cpu") == []
    with pytest.raises(KernelInputError, match="no CPU implementation"):
        MOE.runner(key, cfg(), "fp16", "cpu")


def test_shared_memory_limit():
    key = (*QWEN_TP2, 4096)
    # (128*64 + 64*256) * 2 B * 4 stages = 196608 B: fits sm90's 232448 (vLLM ships it)
    assert MOE.invalid_reason(key, cfg(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64, num_stages=4),
                              "bf16", "cuda") is None
    big = cfg(BLOCK_SIZE_M=256, BLOCK_SIZE_N=256, BLOCK_SIZE_K=128, num_stages=2)  # 262144 B
    assert "shared memory" in MOE.invalid_reason(key, big, "bf16", "cuda")
    assert "shared memory" in MOE.invalid_reason(key, cfg(BLOCK_SIZE_M=64, BLOCK_SIZE_K=128, BLOCK_SIZE_N=128,
                                                          num_stages=5), "bf16", "cuda", arch=8)


def test_block_m_vs_tokens():
    # Qwen, 1 token: 8 routed tokens on 128 experts, each its own block
    assert naive_assignment((*QWEN_TP2, 1)) and not naive_assignment((*QWEN_TP2, 16))
    assert "masked rows" in MOE.invalid_reason((*QWEN_TP2, 1), cfg(BLOCK_SIZE_M=32), "bf16", "cuda")
    # Mixtral, 16 tokens: an expert sees at most 16 of them
    assert MOE.invalid_reason((*MIXTRAL_TP2, 16), cfg(BLOCK_SIZE_M=16), "bf16", "cuda") is None
    assert "BLOCK_SIZE_M=32" in MOE.invalid_reason((*MIXTRAL_TP2, 16), cfg(BLOCK_SIZE_M=32), "bf16", "cuda")
    assert MOE.invalid_reason((*MIXTRAL_TP2, 4096), cfg(BLOCK_SIZE_M=256, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64),
                              "bf16", "cuda") is None


def test_blocks_vs_n_and_k():
    key = (4, 16, 48, 2, 64)  # GEMM1: 32 x 48, GEMM2: 48 x 16
    assert MOE.invalid_reason(key, cfg(BLOCK_SIZE_N=64, BLOCK_SIZE_K=64), "fp16", "cuda") is None
    assert "BLOCK_SIZE_N=128" in MOE.invalid_reason(key, cfg(BLOCK_SIZE_N=128, BLOCK_SIZE_K=64), "fp16", "cuda")
    assert "BLOCK_SIZE_K=128" in MOE.invalid_reason(key, cfg(BLOCK_SIZE_K=128), "fp16", "cuda")


def test_canonical_group_size():
    key = (*QWEN_TP2, 1)  # naive assignment: 8 row blocks in both GEMMs
    assert m_blocks(key, 16) == (8, 8)
    for g in (8, 16, 32, 64):
        assert MOE.canonical(key, cfg(GROUP_SIZE_M=g))["GROUP_SIZE_M"] == 8
    assert MOE.canonical(key, cfg(GROUP_SIZE_M=1))["GROUP_SIZE_M"] == 1  # row-major order differs
    big = (*QWEN_TP2, 4096)  # 32768 slots: hundreds of row blocks, grouping always matters
    assert MOE.canonical(big, cfg(BLOCK_SIZE_M=64, GROUP_SIZE_M=64))["GROUP_SIZE_M"] == 64
    # GEMM1 (A has M=16 rows < BLOCK_SIZE_M) caps its rows at M*top_k*BM; GEMM2 (128 rows) does not
    e1, e2 = m_blocks((*QWEN_TP2, 16), 32)
    assert e1 == e2 == (128 + 128 * 31 + 31) // 32


# ---- vLLM's shipped configs -------------------------------------------------------------
@needs_vllm
def test_vllm_shipped_h100_config_is_read_from_the_wheel():
    path = vllm_config_path(128, 384, H100)
    assert path is not None and path.name == "E=128,N=384,device_name=NVIDIA_H100_80GB_HBM3.json"
    table = json.loads(path.read_text())
    assert vllm_shipped_config((*QWEN_TP2, 1), H100) == table["1"] and set(table["1"]) == set(CONFIG_KEYS)
    assert vllm_shipped_config((*QWEN_TP2, 5), H100) == table["4"]  # nearest M
    assert vllm_shipped_config((*QWEN_TP2, 6), H100) == table["4"]  # tie: the smaller M, as vLLM
    assert vllm_shipped_config((128, 768, 2048, 8, 1), H100) is None  # vLLM ships none for the H100
    assert vllm_shipped_config((*MIXTRAL_TP2, 64), H100) is not None


@needs_vllm
def test_shipped_configs_from_a_copied_folder(tmp_path, monkeypatch):
    """A GPU host without vllm reads the configs folder copied out of the wheel."""
    import shutil

    src = vllm_config_path(128, 384, H100)
    shutil.copy(src, tmp_path / src.name)
    monkeypatch.setenv("TUNER_VLLM_SHIPPED_CONFIGS", str(tmp_path))
    assert vllm_config_path(128, 384, H100) == tmp_path / src.name
    assert vllm_config_path(*MIXTRAL_TP2[:2], H100) is None  # not copied: none, not the wheel's
    monkeypatch.setenv("TUNER_VLLM_SHIPPED_CONFIGS", str(tmp_path / "missing"))
    with pytest.raises(KernelInputError, match="not a folder"):
        vllm_config_path(128, 384, H100)


@needs_vllm
def test_constraints_never_reject_a_config_vllm_ships():
    for E, N, K, top_k in (QWEN_TP2, MIXTRAL_TP2):
        for m in MOE.presets()["qwen3-30b-a3b" if E == 128 else "mixtral-8x7b"]:
            key = (E, N, K, top_k, m[-1])
            c = vllm_shipped_config(key, H100)
            assert all(c[n] in SPACE[n] for n in CONFIG_KEYS), c
            assert MOE.invalid_reason(key, MOE.canonical(key, c), "bf16", "cuda") is None, (key, c)


# ---- inputs and reference -------------------------------------------------------------------
def test_make_inputs_routing():
    key = (16, 8, 24, 4, 33)
    inputs = MOE.make_inputs(key, "fp16", "cpu", n_sets=3, seed=1)
    assert len(inputs.sets) == len(inputs.outs) == 3
    for x, w1, w2, weights, ids in inputs.sets:
        assert x.shape == (33, 24) and w1.shape == (16, 16, 24) and w2.shape == (16, 24, 8)
        assert ids.dtype == torch.int32 and weights.dtype == torch.float32 and ids.shape == weights.shape == (33, 4)
        assert ((ids >= 0) & (ids < 16)).all()
        assert all(len(set(row)) == 4 for row in ids.tolist())  # distinct experts per token
        # renormalised top-k of a softmax, as vLLM's fused_topk(renormalize=True) gives
        assert torch.allclose(weights.sum(-1), torch.ones(33)) and (weights > 0).all()
        assert (weights[:, :-1] >= weights[:, 1:]).all()
    ids0, ids1 = inputs.sets[0][4], inputs.sets[1][4]
    assert not torch.equal(ids0, ids1)  # fresh routing per set
    assert MOE.bytes_per_set(key, "bf16") == 2 * (2 * 33 * 24 + 16 * 3 * 8 * 24) + 8 * 33 * 4


def test_reference_gate_is_the_first_half_of_w1():
    # one expert, N=1, K=1: out = w * silu(x*g) * (x*u) * d, with w1 = [[g], [u]]
    x = torch.tensor([[1.5]])
    w1 = torch.tensor([[[2.0], [3.0]]])
    w2 = torch.tensor([[[5.0]]])
    out = MOE.reference((x, w1, w2, torch.tensor([[0.5]]), torch.tensor([[0]], dtype=torch.int32)))
    want = 0.5 * F.silu(torch.tensor(3.0, dtype=torch.float64)) * 4.5 * 5.0
    assert out.dtype == torch.float64 and torch.allclose(out, want.reshape(1, 1))


def dense_moe(x, w1, w2, weights, ids):
    """Every token through every expert, then masked by the routing: shares no code with the
    reference's gather loop."""
    x, w1, w2 = x.double(), w1.double(), w2.double()
    N = w2.shape[2]
    h = torch.einsum("mk,enk->emn", x, w1)
    y = torch.einsum("emn,ekn->emk", F.silu(h[..., :N]) * h[..., N:], w2)
    gate = torch.zeros(x.shape[0], w1.shape[0], dtype=torch.float64)
    gate.scatter_add_(1, ids.long(), weights.double())
    return torch.einsum("me,emk->mk", gate, y)


@pytest.mark.parametrize("key", [(6, 24, 40, 2, 7), (16, 8, 32, 4, 50), (3, 16, 16, 3, 5)])
def test_reference_matches_dense_computation(key):
    x, w1, w2, weights, ids = MOE.make_inputs(key, "fp16", "cpu", 1, seed=3).sets[0]
    ref = MOE.reference((x, w1, w2, weights, ids))
    assert ref.shape == (key[-1], key[2]) and ref.dtype == torch.float64
    torch.testing.assert_close(ref, dense_moe(x, w1, w2, weights, ids), rtol=1e-12, atol=1e-12)


def test_fp8_w8a8_inputs_reference_and_limits():
    """fp8_w8a8: e4m3 weights with one scale per expert (vLLM's w1_scale / w2_scale), bf16 x and
    out; the reference runs on the dequantized weights; operands are 1 byte in shared memory."""
    key = (6, 24, 40, 2, 7)
    x, w1, w2, weights, ids, s1, s2 = args = MOE.make_inputs(key, FP8, "cpu", 1, seed=3).sets[0]
    assert (x.dtype, w1.dtype, w2.dtype) == (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e4m3fn)
    assert s1.shape == s2.shape == (6,) and s1.dtype == torch.float32
    deq1, deq2 = w1.double() * s1.double()[:, None, None], w2.double() * s2.double()[:, None, None]
    assert (w1.float().abs().amax(dim=(1, 2)) == 448).all()  # each expert's largest weight maps to fp8 max
    bf16 = MOE.make_inputs(key, "bf16", "cpu", 1, seed=3).sets[0]  # same draw, before quantizing
    assert ((deq1 - bf16[1].double()).norm() / bf16[1].double().norm()).item() < 0.05
    ref = MOE.reference(args)
    torch.testing.assert_close(ref, dense_moe(x, deq1, deq2, weights, ids), rtol=1e-12, atol=1e-12)
    assert MOE.tolerance(FP8) == 0.1 and MOE.tolerance("bf16") == 1e-2
    assert MOE.bytes_per_set(key, FP8) == 2 * 2 * 7 * 40 + 6 * 3 * 24 * 40 + 8 * 7 * 2
    # a tile over the shared-memory limit in bf16 fits in fp8 (half the bytes per stage)
    big = cfg(BLOCK_SIZE_M=256, BLOCK_SIZE_N=256, BLOCK_SIZE_K=128, num_stages=3)
    heavy = (8, 14336, 4096, 2, 4096)
    assert "shared memory" in MOE.invalid_reason(heavy, big, "bf16", "cuda")
    assert MOE.invalid_reason(heavy, big, FP8, "cuda") is None
    assert MOE.invalid_reason(heavy, big, "fp32", "cuda").startswith("fused_moe runs bf16, fp16, fp8_w8a8")


@needs_vllm
def test_vllm_shipped_fp8_config_file():
    path = vllm_config_path(*MIXTRAL_TP2[:2], H100, FP8)
    assert path is not None and path.name == "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8.json"
    table = {int(m): c for m, c in json.loads(path.read_text()).items()}
    assert vllm_shipped_config((*MIXTRAL_TP2, 64), H100, FP8) == table[64]
    assert vllm_config_path(*QWEN_TP2[:2], H100, FP8) is None  # bf16 only for that one


# ---- FlagGems on the CPU: its import works without a GPU in a clean subprocess ---------------
@needs_flag_gems
def test_flaggems_default_config_is_a_valid_warm_start(tmp_path):
    """For every preset key FlagGems' own config is a point of the space that the constraints
    accept (so the search can measure it); and the kernel source hash is computable."""
    res = result(run_py("""
        import json
        from kernels import get_kernel
        from kernels.fused_moe import flaggems_default_config
        k = get_kernel("fused_moe")
        rows = []
        for key in [key for keys in k.presets().values() for key in keys]:
            c = flaggems_default_config(key)
            rows.append([list(key), c, k.invalid_reason(key, c, "bf16", "cuda"), k.canonical(key, c) == c])
        print("RESULT " + json.dumps({"rows": rows, "hash": k.source_hash(None)}))
    """, flaggems_env(tmp_path), timeout=300))
    assert len(res["rows"]) == 24
    for key, c, reason, _ in res["rows"]:
        assert all(c[n] in SPACE[n] for n in CONFIG_KEYS), (key, c)
        assert reason is None, (key, c, reason)
    assert len(res["hash"]) == 64


# ---- on the H100 ------------------------------------------------------------------------------
GPU_KEYS = [(*QWEN_TP2, 1), (128, 768, 2048, 8, 64), (*MIXTRAL_TP2, 16), (8, 14336, 4096, 2, 1024)]


def _gpu_check(key, config):
    from tuner.tuning.measure import check

    inputs = MOE.make_inputs(key, "bf16", "cuda", 1, seed=7)
    return check(MOE, MOE.runner(key, config, "bf16", "cuda"), inputs)


def on_gpu(f):
    f = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                           reason="TRITON_INTERPRET=1 is set (run this file alone)")(f)
    f = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")(f)
    return pytest.mark.gpu(f)


@on_gpu
@pytest.mark.parametrize("key", GPU_KEYS)
def test_runner_matches_reference(key):
    grid = grid_configs(MOE, key, "bf16", "cuda")
    for c in (grid[0], grid[len(grid) // 2], grid[-1]):
        res = _gpu_check(key, c)
        assert res.rel_error < MOE.tolerance("bf16"), (c, res)


@on_gpu
@pytest.mark.parametrize("key", GPU_KEYS)
def test_runner_is_fused_experts_impl(key):
    """The step-by-step launcher computes bit for bit what FlagGems' fused_experts_impl does
    with the same config (looked up through the hook tuner installs when serving)."""
    import flag_gems.fused.fused_moe as fm

    x, w1, w2, weights, ids = args = MOE.make_inputs(key, "bf16", "cuda", 1, seed=5).sets[0]
    grid = grid_configs(MOE, key, "bf16", "cuda")
    original = fm.try_get_optimal_moe_config
    for c in (None, grid[len(grid) // 3]):
        want_cfg = c or {k: v for k, v in original(w1.shape, w2.shape, key[3], None, key[-1], key[0]).items()}
        fm.try_get_optimal_moe_config = lambda *a, _c=want_cfg, **kw: dict(_c)
        try:
            want = fm.fused_experts_impl(x, w1, w2, weights, ids)
        finally:
            fm.try_get_optimal_moe_config = original
        out = torch.empty_like(x)
        MOE.runner(key, want_cfg, "bf16", "cuda")(args, out)
        torch.cuda.synchronize()
        assert torch.equal(out, want), want_cfg


@on_gpu
@pytest.mark.parametrize("key", [(*MIXTRAL_TP2, 16), (*QWEN_TP2, 256)])
def test_fp8_runner_is_fused_experts_impl(key):
    """fp8_w8a8: the launcher (activation quantization included) is bit for bit FlagGems'
    fused_experts_impl(use_fp8_w8a8=True, per-expert weight scales, dynamic activation scales),
    with FlagGems' own config and a grid one, and within the fp8 tolerance of the reference."""
    import flag_gems.fused.fused_moe as fm
    from tuner.tuning.measure import check

    x, w1, w2, weights, ids, s1, s2 = args = MOE.make_inputs(key, FP8, "cuda", 1, seed=5).sets[0]
    grid = grid_configs(MOE, key, FP8, "cuda")
    original = fm.try_get_optimal_moe_config
    for c in (None, grid[len(grid) // 3]):
        want_cfg = c or {k: v for k, v in original(w1.shape, w2.shape, key[3], FP8, key[-1], key[0]).items()}
        fm.try_get_optimal_moe_config = lambda *a, _c=want_cfg, **kw: dict(_c)
        try:
            want = fm.fused_experts_impl(x, w1, w2, weights, ids, use_fp8_w8a8=True, w1_scale=s1, w2_scale=s2)
        finally:
            fm.try_get_optimal_moe_config = original
        out = torch.empty_like(x)
        MOE.runner(key, want_cfg, FP8, "cuda")(args, out)
        torch.cuda.synchronize()
        assert torch.equal(out, want), want_cfg
        res = check(MOE, MOE.runner(key, want_cfg, FP8, "cuda"), MOE.make_inputs(key, FP8, "cuda", 1, seed=7))
        assert res.rel_error < MOE.tolerance(FP8), (want_cfg, res)
    base = MOE.baselines(key, FP8, "cuda")
    shipped = vllm_shipped_config(key, torch.cuda.get_device_name(), FP8)
    assert set(base) == ({"untuned", "vllm_shipped"} if shipped else {"untuned"})
    assert "H100" not in torch.cuda.get_device_name() or (shipped is not None) == (key[0] == 8)


@on_gpu
@pytest.mark.parametrize("key", [(*QWEN_TP2, 16), (128, 768, 2048, 8, 16)])
def test_untuned_and_vllm_baselines(key):
    from tuner.tuning.measure import check, time_runner

    base = MOE.baselines(key, "bf16", "cuda")
    shipped = vllm_shipped_config(key, torch.cuda.get_device_name())
    assert set(base) == ({"untuned", "vllm_shipped"} if shipped else {"untuned"})
    assert "H100" not in torch.cuda.get_device_name() or (shipped is not None) == (key[1] == 384)
    inputs = MOE.make_inputs(key, "bf16", "cuda", 2, seed=0)
    for name, run in base.items():
        assert check(MOE, run, inputs).rel_error < MOE.tolerance("bf16"), name
        us, method = time_runner(run, inputs, "cuda")
        assert method == "cuda-graph" and us > 0, name  # graph-capturable, as vLLM times it
    (untuned, *rest) = MOE.untuned_configs(key, "bf16", "cuda")
    assert MOE.invalid_reason(key, untuned, "bf16", "cuda") is None and rest == ([shipped] if shipped else [])


@on_gpu
def test_tune_end_to_end(tmp_path):
    from tuner.tuning.flow import TuneRequest, tune

    url = f"sqlite:///{tmp_path / 't.db'}"
    (res,) = tune(TuneRequest(op="fused_moe", shapes=["128,384,2048,8,16"], trials=10, device="cuda", seed=0,
                              db_url=url))
    o = res.outcome
    assert res.stored and o.timing == "cuda-graph" and not o.setup.baseline_errors
    assert {"untuned", "vllm_shipped"} <= set(o.setup.baselines_us)
    # both warm starts are measured first, so the best is never worse than either (+noise)
    assert o.best_us <= min(o.setup.baselines_us.values()) * 1.05
