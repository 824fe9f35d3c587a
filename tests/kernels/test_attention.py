"""attention: key, presets, space, constraints, canonical and reference on the CPU; what needs
FlagGems' real modules runs in a clean subprocess (it cannot import under TRITON_INTERPRET=1,
which other test modules set). The runner and baselines run on the H100:
tests/gpu/test_attention_gpu.py."""

import os

import pytest
import torch
import torch.nn.functional as F

from kernels import get_kernel
from kernels.attention import (
    CONFIG_KEYS,
    MINICPMO,
    NO_CPU,
    SPACE,
    attended_pairs,
    attention_reference,
    flaggems_rows,
    padded_head_dim,
)
from kernels.base import KernelInputError
from tests.conftest import flaggems_env, needs_flag_gems, result, run_py
from tuner.tuning.search import grid_configs

ATT = get_kernel("attention")
PREFILL, DECODE, VISION, WHISPER = MINICPMO[1], MINICPMO[2], MINICPMO[3], MINICPMO[4]


def cfg(**kw):
    return {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3} | kw


# ---- keys -------------------------------------------------------------------------------
def test_parse_key():
    assert ATT.parse_key("10,16,16,1024,1024,72,0") == VISION
    assert ATT.parse_key("1x28x4x2048x2048x128x1") == PREFILL
    assert ATT.parse_key("2,8,8,16,64,64,1") == (2, 8, 8, 16, 64, 64, 1)  # causal, q_len < kv_len


@pytest.mark.parametrize("bad, why", [
    ("1,28,4,512,512,128", "7 integers"),
    ("1,28,4,512,512,128,1,1", "7 integers"),
    ("1,28,4,a,512,128,1", "integers"),
    ("0,28,4,512,512,128,1", "positive"),
    ("1,28,4,512,512,128,2", "causal must be 0 or 1"),
    ("1,28,5,512,512,128,0", "not a multiple of kv_heads"),
    ("1,16,16,64,64,320,0", "head_dim <= 256"),
    ("1,16,16,64,32,64,1", "q_len <= kv_len"),
])
def test_parse_key_errors(bad, why):
    with pytest.raises(KernelInputError, match=why):
        ATT.parse_key(bad)


def test_presets():
    assert set(ATT.presets()) == {"minicpmo"}
    keys = ATT.presets()["minicpmo"]
    assert keys == MINICPMO and len(set(keys)) == 5
    assert (1, 28, 4, 512, 512, 128, 1) in keys and (1, 16, 16, 1500, 1500, 64, 0) in keys
    # decode at batch 1 and 16 goes to FlagGems' split-KV path on an H100: not tunable
    assert (1, 28, 4, 1, 2048, 128, 0) not in keys and (16, 28, 4, 1, 2048, 128, 0) not in keys
    for k in keys:
        assert ATT.parse_key(",".join(map(str, k))) == k


def test_shapes_as_flaggems_sees_them():
    assert [padded_head_dim(d) for d in (64, 72, 96, 100, 128, 200)] == [64, 96, 96, 128, 128, 256]
    assert flaggems_rows(DECODE) == (7, 4)  # mha_fwd's query-group swap
    assert flaggems_rows((64, 16, 16, 1, 2048, 64, 0)) == (1, 16)  # no GQA: nothing to swap
    assert flaggems_rows(VISION) == (1024, 16)
    assert attended_pairs((1, 1, 1, 4, 4, 8, 1)) == 10  # 1 + 2 + 3 + 4
    assert attended_pairs((1, 1, 1, 2, 5, 8, 1)) == 4 + 5  # bottom-right: rows see 4 and 5 keys
    assert attended_pairs((1, 1, 1, 2, 5, 8, 0)) == 10
    assert ATT.flops(PREFILL) == 4.0 * 28 * 128 * (2048 * 2049 // 2)
    assert ATT.bytes_per_set(VISION, "bf16") == 2 * 72 * (2 * 10 * 1024 * 16 + 2 * 10 * 1024 * 16)


@pytest.mark.parametrize("args, needle", [
    (["--shapes", "minicpmo", "--device", "cpu"], "no CPU implementation"),
    (["--shape", "1,28,5,512,512,128,1"], "not a multiple of kv_heads"),
])
def test_cli_refuses_with_one_sentence(tmp_path, monkeypatch, args, needle):
    from typer.testing import CliRunner

    from cli import app

    # `--device cpu` sets TRITON_INTERPRET=1 in this process: have monkeypatch restore it
    if "TRITON_INTERPRET" in os.environ:
        monkeypatch.setenv("TRITON_INTERPRET", os.environ["TRITON_INTERPRET"])
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    db = tmp_path / "t.db"
    res = CliRunner().invoke(app, ["tune", "--op", "attention", *args, "--db", str(db)])
    assert res.exit_code == 2 and needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not db.exists()


# ---- space, constraints, canonical ----------------------------------------------------------
def test_grid_is_nonempty_valid_and_canonical():
    for key in MINICPMO:
        grid = grid_configs(ATT, key, "bf16", "cuda")
        assert len(grid) > 50, key
        for c in grid:
            assert ATT.invalid_reason(key, c, "bf16", "cuda") is None and ATT.canonical(key, c) == c


def test_cpu_has_no_implementation():
    assert ATT.devices == ("cuda",)
    assert ATT.invalid_reason(VISION, cfg(), "fp16", "cpu") == NO_CPU
    assert grid_configs(ATT, VISION, "fp16", "cpu") == []
    with pytest.raises(KernelInputError, match="no CPU implementation"):
        ATT.runner(VISION, cfg(), "fp16", "cpu")
    assert "fp32" in ATT.invalid_reason(VISION, cfg(), "fp32", "cuda")


def test_block_m_vs_query_rows():
    # decode: 7 rows per (batch, kv head) after the group swap; FlagGems' own 128 stays reachable
    assert ATT.invalid_reason(DECODE, cfg(BLOCK_M=16), "bf16", "cuda") is None
    assert ATT.invalid_reason(DECODE, cfg(BLOCK_M=128), "bf16", "cuda") is None
    assert "BLOCK_M=256" in ATT.invalid_reason(DECODE, cfg(BLOCK_M=256), "bf16", "cuda")
    assert ATT.invalid_reason(PREFILL, cfg(BLOCK_M=256, num_warps=8), "bf16", "cuda") is None


def test_block_n_vs_kv_len():
    short = (1, 16, 16, 40, 40, 64, 0)
    assert ATT.invalid_reason(short, cfg(BLOCK_N=128), "bf16", "cuda") is None
    assert "BLOCK_N=256" in ATT.invalid_reason(short, cfg(BLOCK_N=256), "bf16", "cuda")
    assert ATT.invalid_reason(WHISPER, cfg(BLOCK_N=256, num_stages=2), "bf16", "cuda") is None


def test_causal_needs_block_n_at_most_block_m():
    causal, noncausal = MINICPMO[0], VISION
    assert causal[6] == 1 and noncausal[6] == 0
    wrong = cfg(BLOCK_M=16, BLOCK_N=64)  # wrong results on the H100 (rel error 0.6)
    assert "BLOCK_N=64 > BLOCK_M=16" in ATT.invalid_reason(causal, wrong, "bf16", "cuda")
    assert ATT.invalid_reason(causal, cfg(BLOCK_M=64, BLOCK_N=64), "bf16", "cuda") is None
    assert ATT.invalid_reason(noncausal, wrong, "bf16", "cuda") is None


def test_shared_memory_and_registers():
    # head_dim 128: BLOCK_K 128; K and V tiles of 128x128 bf16 are 64 KiB a stage
    assert ATT.invalid_reason(PREFILL, cfg(BLOCK_N=128, num_warps=8, num_stages=4), "bf16", "cuda") is None
    assert "shared memory" in ATT.invalid_reason(PREFILL, cfg(BLOCK_N=128, num_stages=5), "bf16", "cuda")
    assert "shared memory" in ATT.invalid_reason(PREFILL, cfg(BLOCK_N=128, num_stages=4), "bf16", "cuda", arch=8)
    # vision 72 runs padded to 96, BLOCK_K 128: same tiles as 128
    assert "shared memory" in ATT.invalid_reason(VISION, cfg(BLOCK_N=256, num_stages=3), "bf16", "cuda")
    assert ATT.invalid_reason(WHISPER, cfg(BLOCK_N=256, num_stages=3), "bf16", "cuda") is None  # BLOCK_K 64
    assert "registers" in ATT.invalid_reason(PREFILL, cfg(BLOCK_M=256, num_warps=2), "bf16", "cuda")
    assert ATT.invalid_reason(PREFILL, cfg(BLOCK_M=256, num_warps=4), "bf16", "cuda") is None


def test_canonical_keeps_the_four_parameters():
    c = ATT.canonical(VISION, {"BLOCK_M": 128.0, "BLOCK_N": 32, "PRE_LOAD_V": True, "num_warps": 4,
                               "num_stages": 2})
    assert c == {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    assert all(type(v) is int for v in c.values()) and tuple(c) == CONFIG_KEYS == tuple(SPACE)


# ---- inputs and reference -------------------------------------------------------------------
def test_make_inputs_layout():
    key = (2, 4, 2, 5, 9, 16, 1)
    inputs = ATT.make_inputs(key, "fp16", "cpu", n_sets=2, seed=1)
    assert len(inputs.sets) == len(inputs.outs) == 2
    for (q, k, v, causal), out in zip(inputs.sets, inputs.outs):
        assert q.shape == out.shape == (2, 5, 4, 16) and k.shape == v.shape == (2, 9, 2, 16)
        assert q.is_contiguous() and k.is_contiguous() and q.dtype == torch.float16 and causal is True
    assert not torch.equal(inputs.sets[0][0], inputs.sets[1][0])


def sdpa_math(q, k, v, causal):
    """torch's math SDPA in fp64 on (b, h, s, d) views: shares no code with the reference."""
    # imported here: torch.nn.attention.bias imports triton, which must not load before
    # test_mm.py sets TRITON_INTERPRET=1 at collection
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    Sq, H = q.shape[1:3]
    Skv, Hkv = k.shape[1:3]
    mask = causal_lower_right(Sq, Skv) if causal and Sq != Skv else None
    with sdpa_kernel([SDPBackend.MATH]):
        o = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v)), attn_mask=mask,
                                           is_causal=bool(causal) and mask is None, enable_gqa=H != Hkv)
    return o.transpose(1, 2)


@pytest.mark.parametrize("key", [
    (2, 4, 4, 8, 8, 16, 0),  # plain
    (1, 6, 2, 7, 7, 8, 0),  # GQA
    (2, 4, 4, 9, 9, 16, 1),  # causal, square
    (1, 6, 3, 5, 12, 8, 1),  # GQA, causal with q_len < kv_len: bottom-right
    (3, 28, 4, 1, 33, 16, 0),  # decode
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_matches_torch_sdpa_math(key, dtype):
    B, H, Hkv, Sq, Skv, D, causal = key
    g = torch.Generator().manual_seed(sum(key))
    q = torch.randn((B, Sq, H, D), generator=g, dtype=dtype)
    k, v = (torch.randn((B, Skv, Hkv, D), generator=g, dtype=dtype) for _ in range(2))
    ref = ATT.reference((q, k, v, bool(causal)))
    assert ref.dtype == torch.float64 and ref.shape == (B, Sq, H, D)
    torch.testing.assert_close(ref, sdpa_math(q, k, v, causal), rtol=1e-10, atol=1e-10)


def test_reference_causal_is_bottom_right():
    # one query over 3 keys, causal: it is the last query, so it sees every key (top-left
    # alignment would let it see only the first)
    q = torch.ones(1, 1, 1, 8, dtype=torch.float64)
    k = torch.zeros(1, 3, 1, 8, dtype=torch.float64)
    v = torch.arange(3, dtype=torch.float64).reshape(1, 3, 1, 1).expand(1, 3, 1, 8)
    assert torch.allclose(attention_reference(q, k, v, True), torch.ones(1, 1, 1, 8, dtype=torch.float64))
    q2 = torch.ones(1, 2, 1, 8, dtype=torch.float64)  # row 0 sees keys 0..1, row 1 all three
    out = attention_reference(q2, k, v, True)[0, :, 0, 0]
    assert torch.allclose(out, torch.tensor([0.5, 1.0], dtype=torch.float64))


# ---- FlagGems on the CPU: its real modules, in a clean subprocess ----------------------------
def run_fg(code: str, tmp_path) -> dict:
    return result(run_py(code, flaggems_env(tmp_path), timeout=300))


@needs_flag_gems
def test_flaggems_facts_the_module_relies_on(tmp_path):
    res = run_fg("""
        import json
        import flag_gems
        import flag_gems.ops.attention as at
        from kernels import get_kernel
        from kernels.attention import (FG_HEAD_DIMS, H100_SMS, MINICPMO, autotuner, flaggems_configs,
                                       flaggems_path, runtime_key)
        k = get_kernel("attention")
        t = autotuner()
        decode = [(b, 28, 4, 1, 2048, 128, 0) for b in (1, 16, 64)]
        print("RESULT " + json.dumps({
            "head_dims": FG_HEAD_DIMS in at.flash_attention_forward.__code__.co_consts,
            "aten": [n for n, *_ in flag_gems._FULL_CONFIG if "attention" in n or "sdp" in n],
            "keys": t.keys, "n_configs": len(t.configs),
            "listed": [[c.kwargs, c.num_warps, c.num_stages] for c in t.configs],
            "configs": flaggems_configs(),
            "valid": [[list(key), c, k.invalid_reason(key, c, "bf16", "cuda"), k.canonical(key, c) == c]
                      for key in MINICPMO for c in flaggems_configs()],
            "path_h100": [flaggems_path(key, H100_SMS) for key in MINICPMO],
            "decode_h100": [flaggems_path(key, H100_SMS) for key in decode],
            "key": list(runtime_key(96, "fp16")),
            "hash": k.source_hash(), "hash_again": k.source_hash({"BLOCK_M": 64}),
        }))
    """, tmp_path)
    assert res["head_dims"]  # flash_attention_forward pads to exactly these
    assert res["aten"] == ["_flash_attention_forward"]  # the only attention op FlagGems registers
    assert res["keys"] == ["d", "is_dropout"] and res["n_configs"] == 12
    for kwargs, warps, stages in res["listed"]:  # FlagGems' list is a subset of the space
        assert set(kwargs) == {"BLOCK_M", "BLOCK_N", "PRE_LOAD_V"}
        assert kwargs["BLOCK_M"] in SPACE["BLOCK_M"] and kwargs["BLOCK_N"] in SPACE["BLOCK_N"]
        assert warps in SPACE["num_warps"] and stages in SPACE["num_stages"]
    assert len(res["configs"]) == 6  # PRE_LOAD_V twins are one program
    for key, c, reason, canonical in res["valid"]:  # the warm start is never pruned
        assert reason is None and canonical, (key, c, reason)
    assert res["path_h100"] == ["flash_fwd"] * 5
    assert res["decode_h100"] == ["splitkv", "splitkv", "flash_fwd"]
    assert res["key"] == [96, False] + ["torch.float16"] * 4 + ["torch.float32"] * 2 + ["torch.int64"]
    assert len(res["hash"]) == 64 and res["hash"] == res["hash_again"]


@needs_flag_gems
def test_source_hash_is_stable_across_processes(tmp_path):
    code = """
        import json
        from kernels import get_kernel
        print("RESULT " + json.dumps(get_kernel("attention").source_hash()))
    """
    assert run_fg(code, tmp_path) == run_fg(code, tmp_path)


@needs_flag_gems
def test_runner_launches_flaggems_jit_with_the_config(tmp_path):
    """The runner drives FlagGems' own flash_attention_forward -> mha_fwd and launches the layers
    below the autotuner with the given config; only mha_fwd's device calls and the JIT launch are
    stand-ins (no GPU here)."""
    res = run_fg("""
        import contextlib, json, types
        import torch
        import flag_gems.ops.flash_api as fa
        from kernels.attention import _fg_runner, autotuner
        class NoGpu:
            def device(self, d): return contextlib.nullcontext()
            def get_device_properties(self, d): return types.SimpleNamespace(multi_processor_count=132)
        fa.CHECK_DEVICE, fa.torch_device_fn, real = (lambda x: None), NoGpu(), fa.flash_fwd_kernel
        seen = []
        class Jit:
            def run(self, *args, **kw):
                seen.append((dict(zip(autotuner().arg_names, args)), kw))
                seen[-1][0]["o_ptr"].fill_(1.0)  # "the kernel's output"
        autotuner().fn.fn = Jit()
        rows = []
        for key, c in (((2, 28, 4, 1, 40, 72, 0), {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 2, "num_stages": 1}),
                       ((1, 8, 8, 256, 256, 64, 1), {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 5})):
            B, H, Hkv, Sq, Skv, D, causal = key
            q = torch.randn(B, Sq, H, D, dtype=torch.bfloat16)
            k, v = (torch.randn(B, Skv, Hkv, D, dtype=torch.bfloat16) for _ in range(2))
            out = torch.full_like(q, float("nan"))
            _fg_runner(key, c)((q, k, v, bool(causal)), out)
            nargs, kw = seen.pop()
            rows.append({"meta": {n: kw[n] for n in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "BLOCK_K",
                                                      "PRE_LOAD_V", "IS_EVEN_MN", "warmup")},
                         "args": {n: nargs[n] for n in ("d", "h", "hk", "seqlen_q", "seqlen_k", "is_causal",
                                                        "seqlenq_ngroups_swapped", "is_dropout")},
                         "grid": list(kw["grid"]({**nargs, **kw})),
                         "restored": fa.flash_fwd_kernel is real, "copied": bool((out == 1).all())})
        print("RESULT " + json.dumps(rows))
    """, tmp_path)
    decode, prefill = res
    # decode: 72 padded to 96 (BLOCK_K 128), 28/4 heads swapped to 7 rows over 4 heads
    assert decode["meta"] == {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 2, "num_stages": 1, "BLOCK_K": 128,
                              "PRE_LOAD_V": False, "IS_EVEN_MN": False, "warmup": False}
    assert decode["args"] == {"d": 96, "h": 4, "hk": 4, "seqlen_q": 7, "seqlen_k": 40, "is_causal": False,
                              "seqlenq_ngroups_swapped": True, "is_dropout": False}
    assert decode["grid"] == [1, 8]
    assert prefill["meta"]["IS_EVEN_MN"] is True and prefill["meta"]["BLOCK_K"] == 64
    assert prefill["args"]["is_causal"] is True and prefill["grid"] == [4, 8]
    assert all(r["restored"] and r["copied"] for r in res)  # module global put back; output copied out
