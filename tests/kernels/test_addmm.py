"""addmm: key, presets, space, constraints, canonical and reference on the CPU; FlagGems' own
config list, LibTuner and kernel source read from the real flag_gems in a subprocess (it cannot
import here: other test modules set TRITON_INTERPRET=1). The runner is checked on the H100 in
tests/gpu/test_addmm_gpu.py; the persistent variant's kernel runs here under the interpreter."""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import get_kernel  # noqa: E402
from kernels.addmm import CONFIG_KEYS, NO_CPU, OWN_SPACE, PERSISTENT, SPACE, SPLITK, STREAMK, VARIANT, mm_config  # noqa: E402
from kernels.base import KernelInputError  # noqa: E402
from tests.conftest import needs_flag_gems, result, run_py  # noqa: E402
from tuner.tuning.search import grid_configs  # noqa: E402

ADDMM = get_kernel("addmm")
MM = get_kernel("mm")


def cfg(**kw):
    return {"variant": VARIANT, "BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 32,
            "num_warps": 4, "num_stages": 4} | kw


def test_parse_key():
    assert ADDMM.parse_key("16,512,3584") == (16, 512, 3584, 1)
    assert ADDMM.parse_key("16, 512, 3584, kn") == (16, 512, 3584, 0)
    for bad, msg in [("16,512", "op addmm must be M,N,K"), ("a,b,c", "integers"),
                     ("0,512,3584", "positive"), ("1,2,3,xx", "weight layout"), ("1,2,3,4,5", "op addmm")]:
        with pytest.raises(KernelInputError, match=msg):
            ADDMM.parse_key(bad)


def test_presets():
    p = ADDMM.presets()
    llm = {(m, n, k, 1) for m in (1, 16, 64, 512, 2048) for n, k in ((3584, 3584), (512, 3584))}
    vision = {(10240, 1152, 1152, 1), (10240, 4304, 1152, 1), (10240, 1152, 4304, 1)}
    audio = {(1500, 1024, 1024, 1), (1500, 4096, 1024, 1), (1500, 1024, 4096, 1), (1500, 3584, 1024, 1)}
    assert set(p["minicpmo-llm"]) == llm and set(p["minicpmo-vision"]) == vision
    assert set(p["minicpmo-audio"]) == audio
    assert p["minicpmo-resampler"] == [(640, 3584, 3584, 1)]  # its attention's out_proj
    assert sorted(p["minicpmo"]) == sorted(llm | vision | audio | {(640, 3584, 3584, 1)}) and len(p["minicpmo"]) == 18


def test_cpu_has_no_implementation():
    assert ADDMM.devices == ("cuda",)
    assert ADDMM.invalid_reason((16, 512, 3584, 1), cfg(), "fp16", "cpu") == NO_CPU
    with pytest.raises(KernelInputError) as e:
        ADDMM.runner((16, 512, 3584, 1), cfg(), "fp16", "cpu")
    assert str(e.value) == NO_CPU and str(e.value).count(". ") == 0  # one sentence
    assert ADDMM.untuned_configs((16, 512, 3584, 1), "fp16", "cpu") == []
    assert set(ADDMM.baselines((16, 512, 3584, 1), "fp16", "cpu")) == {"native"}


def test_constraints():
    key = (1, 512, 3584, 1)
    assert ADDMM.invalid_reason(key, cfg(), "bf16", "cuda") is None
    assert "BLOCK_SIZE_M=256" in ADDMM.invalid_reason(key, cfg(BLOCK_SIZE_M=256), "bf16", "cuda")
    assert ADDMM.invalid_reason((300, 512, 3584, 1), cfg(BLOCK_SIZE_M=256, BLOCK_SIZE_N=32, num_warps=8),
                                "bf16", "cuda") is None
    # FlagGems' list (up to 128 x 256 x 64) stays reachable for small keys: its untuned pick
    assert ADDMM.invalid_reason((1, 32, 32, 1), cfg(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64,
                                                    num_warps=8, num_stages=3), "bf16", "cuda") is None
    assert "BLOCK_SIZE_K=128" in ADDMM.invalid_reason((16, 512, 40, 1), cfg(BLOCK_SIZE_K=128), "bf16", "cuda")
    big = cfg(BLOCK_SIZE_M=256, BLOCK_SIZE_N=256, BLOCK_SIZE_K=128, num_warps=8, num_stages=5)
    assert "shared memory" in ADDMM.invalid_reason((4096, 4096, 4096, 1), big, "bf16", "cuda")
    assert "registers" in ADDMM.invalid_reason((4096, 4096, 4096, 1), cfg(BLOCK_SIZE_M=256, BLOCK_SIZE_N=256),
                                               "bf16", "cuda")
    assert "2 warps" in ADDMM.invalid_reason((4096, 4096, 4096, 1), cfg(num_warps=2), "bf16", "cuda")
    assert "not fg_addmm" in ADDMM.invalid_reason(key, cfg(variant="other"), "bf16", "cuda")
    own = dict(GROUP_M=1, OCCUPANCY=2, WARP_SPECIALIZE=0, FLATTEN=0, EPILOGUE_SUBTILE=0)
    pers = cfg(variant=PERSISTENT, BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, num_warps=8, **own)
    assert ADDMM.invalid_reason((4096, 4608, 3584, 1), pers | {"OCCUPANCY": 1}, "bf16", "cuda") is None
    assert "programs per SM" in ADDMM.invalid_reason((4096, 4608, 3584, 1), pers, "bf16", "cuda")
    assert "no CPU" in ADDMM.invalid_reason((4096, 4608, 3584, 1), pers, "fp16", "cpu")
    # the persistent knobs mean nothing to FlagGems' kernel: pinned, so its configs stay distinct
    assert ADDMM.canonical(key, cfg() | own)["OCCUPANCY"] == 1
    assert ADDMM.canonical((16, 512, 3584, 1), pers | {"GROUP_M": 8})["GROUP_M"] == 1  # one row of tiles


def test_persistent_variant_runs_with_the_bias_epilogue():
    """Under the interpreter (the CPU space has no persistent variant: its runner is the GPU's)."""
    key = (40, 64, 96, 1)
    inputs = ADDMM.make_inputs(key, "fp16", "cpu", 1, seed=0)
    cfg_ = dict(variant=PERSISTENT, BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, num_warps=4, num_stages=2,
                GROUP_M=2, OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=1, EPILOGUE_SUBTILE=1)
    from kernels.persistent_mm import persistent_mm

    out = persistent_mm(*inputs.sets[0][1:], mm_config(cfg_), out=inputs.outs[0], bias=inputs.sets[0][0])
    ref = ADDMM.reference(inputs.sets[0])
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-3
    assert ADDMM.source_hash(cfg_) == MM.source_hash({"variant": PERSISTENT})


def splitk_cfg(**kw):
    return cfg(variant=SPLITK, BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, num_warps=4, num_stages=2,
               GROUP_M=1, OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=0, EPILOGUE_SUBTILE=0, SPLIT_K=4) | kw


def test_splitk_variant_names_constraints_and_identity():
    key = (1, 512, 3584, 1)
    mm = mm_config(splitk_cfg())
    assert mm["variant"] == SPLITK and mm["SPLIT_K"] == 4 and (mm["BLOCK_M"], mm["BLOCK_N"], mm["BLOCK_K"]) == (16, 32, 32)
    assert ADDMM.invalid_reason(key, splitk_cfg(), "bf16", "cuda") is None
    assert "no CPU" in ADDMM.invalid_reason(key, splitk_cfg(), "bf16", "cpu")
    assert "less than one BLOCK_K" in ADDMM.invalid_reason((1, 512, 96, 1), splitk_cfg(), "bf16", "cuda")
    # knobs split-K does not take are pinned; SPLIT_K is pinned for the others
    c = ADDMM.canonical(key, splitk_cfg(OCCUPANCY=2, FLATTEN=1, GROUP_M=8))
    assert (c["OCCUPANCY"], c["FLATTEN"], c["GROUP_M"], c["SPLIT_K"]) == (1, 0, 1, 4)
    pers = splitk_cfg(variant=PERSISTENT, num_warps=4)
    assert ADDMM.canonical((4096, 4608, 3584, 1), pers)["SPLIT_K"] == 1 and mm_config(pers)["SPLIT_K"] == 1
    assert ADDMM.canonical(key, cfg(SPLIT_K=8))["SPLIT_K"] == 1
    assert ADDMM.source_hash(splitk_cfg()) == MM.source_hash({"variant": SPLITK}) != MM.source_hash({"variant": PERSISTENT})
    # the reduction in the same launch: the knob passes to mm's config, pinned off for the others
    assert mm_config(splitk_cfg(FUSED_REDUCE=1))["FUSED_REDUCE"] == 1 and mm_config(pers | {"FUSED_REDUCE": 1})["FUSED_REDUCE"] == 0
    assert ADDMM.canonical(key, splitk_cfg(SPLIT_K=1, FUSED_REDUCE=1))["FUSED_REDUCE"] == 0
    # a record stored before split-K was a variant (no SPLIT_K key) keeps its meaning
    old = {k: v for k, v in pers.items() if k != "SPLIT_K"}
    assert mm_config(old)["SPLIT_K"] == 1 and "SPLIT_K" not in ADDMM.canonical((4096, 4608, 3584, 1), old)


@pytest.mark.parametrize("split_k", [1, 3, 4])
@pytest.mark.parametrize("fused", [0, 1])
@pytest.mark.parametrize("dtype, tol", [("fp32", 1e-5), ("fp16", 5e-3)])  # the interpreter's bf16 is wrong
def test_splitk_variant_runs_with_the_bias_added_once(split_k, fused, dtype, tol):
    """Under the interpreter: the bias lands once whether the GEMM, the reduce kernel or the last
    split of a tile (FUSED_REDUCE) writes the output (every split adding it would be off by
    (SPLIT_K - 1) x bias)."""
    key = (5, 40, 96, 1)
    inputs = ADDMM.make_inputs(key, dtype, "cpu", 1, seed=3)
    bias = inputs.sets[0][0]
    bias.add_(10.0)  # large against A @ B, so a bias added twice or never cannot pass
    out = ADDMM.own_runner(mm_config(splitk_cfg(SPLIT_K=split_k, FUSED_REDUCE=fused)))(inputs.sets[0], inputs.outs[0])
    ref = ADDMM.reference(inputs.sets[0])
    assert out is inputs.outs[0]
    assert ((out.double() - ref).norm() / ref.norm()).item() < tol
    assert (out.double() - ref).abs().max().item() < 0.1 * 10


def test_splitk_refuses_a_bias_of_the_wrong_length():
    from kernels.triton_mm import splitk_mm

    a, b = torch.randn(4, 32), torch.randn(32, 16)
    with pytest.raises(ValueError, match="bias must have shape"):
        splitk_mm(a, b, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32), bias=torch.randn(15))


def test_grid_is_nonempty_valid_and_canonical():
    for key in ADDMM.presets()["minicpmo"]:  # every MiniCPM-o key has TMA-aligned rows
        space = ADDMM.space(key, "bf16", "cuda")
        assert space == {"variant": (VARIANT, PERSISTENT, STREAMK, SPLITK), **SPACE, **OWN_SPACE}
    # rows TMA cannot read (4100 bf16 = 8200 B): split-K without the persistent knobs
    assert ADDMM.space((16, 4100, 3584, 1), "bf16", "cuda") == {
        "variant": (VARIANT, SPLITK), **SPACE, "GROUP_M": OWN_SPACE["GROUP_M"], "SPLIT_K": OWN_SPACE["SPLIT_K"],
        "FUSED_REDUCE": (0, 1)}
    assert ADDMM.space((16, 4100, 3584, 1), "bf16", "cpu") == {"variant": (VARIANT,), **SPACE}
    for key in [(1, 512, 3584, 1), (1500, 4096, 1024, 1)]:
        valid = grid_configs(ADDMM, key, "bf16", "cuda")
        fg = [c for c in valid if c["variant"] == VARIANT]
        splitk = [c for c in valid if c["variant"] == SPLITK]
        assert len(fg) > 50 and len(valid) - len(fg) - len(splitk) > 1000, key
        assert len(splitk) > 100 and any(c["SPLIT_K"] > 1 for c in splitk), key
        assert all(ADDMM.canonical(key, c) == c for c in valid)
    assert grid_configs(ADDMM, (16, 512, 3584, 1), "fp16", "cpu") == []
    assert ADDMM.canonical((1, 2, 3, 1), {**cfg(), "extra": 1}) == cfg()


def test_reference_is_addmm_with_a_broadcast_bias():
    key = (5, 24, 40, 1)
    inputs = ADDMM.make_inputs(key, "fp32", "cpu", 2, seed=0)
    assert len(inputs.sets) == len(inputs.outs) == 2
    bias, a, b = inputs.sets[0]
    assert bias.shape == (24,) and a.shape == (5, 40) and b.shape == (40, 24) and b.stride() == (1, 40)
    assert not torch.equal(inputs.sets[0][1], inputs.sets[1][1])
    ref = ADDMM.reference(inputs.sets[0])
    assert ref.dtype == torch.float64
    torch.testing.assert_close(ref, (a.double() @ b.double()) + bias.double()[None, :])
    torch.testing.assert_close(ref.float(), torch.addmm(bias, a, b), rtol=1e-5, atol=1e-5)
    out = inputs.outs[0]
    ADDMM.baselines(key, "fp32", "cpu")["native"](inputs.sets[0], out)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    _, _, b_kn = ADDMM.make_inputs((5, 24, 40, 0), "fp32", "cpu", 1, seed=0).sets[0]
    assert b_kn.is_contiguous()
    assert ADDMM.bytes_per_set(key, "bf16") == (5 * 40 + 40 * 24 + 5 * 24 + 24) * 2
    assert ADDMM.flops(key) == 2 * 5 * 24 * 40


@needs_flag_gems
def test_space_holds_flaggems_list_and_its_libtuner(tmp_path):
    """FlagGems' own addmm list (what its LibTuner picks from untuned) is inside the space and
    accepted by the constraints for every preset key; the kernel and study hashes are stable."""
    fg_env = {"GEMS_VENDOR": "nvidia", "ARCH": "sm_90", "HOME": str(tmp_path),
              "FLAGGEMS_DB_URL": f"sqlite:///{tmp_path / 'flaggems.db'}"}
    out = run_py("""
        import json, inspect
        from kernels import get_kernel
        from kernels.addmm import as_config, flag_gems_addmm_module, libtuner
        k = get_kernel("addmm")
        mod = flag_gems_addmm_module()
        t = libtuner(mod.addmm_kernel)
        keys = [key for key in k.presets()["minicpmo"]] + [(1, 32, 32, 1), (3, 64, 48, 0)]
        print("RESULT", json.dumps({
            "configs": [as_config(c) for c in t.configs],
            "hooks": [c.pre_hook is not None for c in t.configs],
            "key_args": t.keys, "strategy": [s.__name__ for s in t.strategy],
            "reasons": sorted({str(k.invalid_reason(key, as_config(c), dt, "cuda"))
                               for key in keys for c in t.configs for dt in ("bf16", "fp16")}),
            "canonical": all(k.canonical(key, as_config(c)) == as_config(c) for key in keys for c in t.configs),
            "hash": k.source_hash({"variant": "fg_addmm"}), "hash_none": k.source_hash(),
            "src_has_kernel": "def addmm_kernel(" in inspect.getsource(mod)}))
    """, fg_env)
    r = result(out)
    assert len(r["configs"]) == 8 and not any(r["hooks"])
    assert r["key_args"] == ["M", "N", "K"] and r["strategy"] == ["align32_strategy"] * 3
    for c in r["configs"]:
        assert c["variant"] == VARIANT and all(c[n] in SPACE[n] for n in CONFIG_KEYS), c
    assert r["reasons"] == ["None"] and r["canonical"] and r["src_has_kernel"]
    # a record's hash: FlagGems' function; a study's (no config): every module of the op
    assert len(r["hash"]) == 64 and len(r["hash_none"]) == 16 and not r["hash"].startswith(r["hash_none"])
    again = result(run_py("""
        import json
        from kernels import get_kernel
        k = get_kernel("addmm")
        print("RESULT", json.dumps([k.source_hash({"variant": "fg_addmm"}), k.source_hash()]))
    """, fg_env))
    assert again == [r["hash"], r["hash_none"]]


def test_warm_starts_measure_every_own_variant_early():
    """A short search still measures each own variant: split-K and skinny stream-K starts at decode
    M (split-K: the H200's mm winners), persistent ones where TMA reads the rows, stream-K at prefill;
    every start valid, canonical and in the space."""
    for key, variants in [((1, 4608, 3584, 1), {PERSISTENT, SPLITK, STREAMK}), ((4096, 4608, 3584, 1), {PERSISTENT, STREAMK}),
                          ((16, 4100, 3584, 1), {SPLITK})]:
        starts = ADDMM.starting_configs(key, "bf16", "cuda")
        space = ADDMM.space(key, "bf16", "cuda")
        assert {c["variant"] for c in starts} == variants, key
        for c in starts:
            assert ADDMM.invalid_reason(key, c, "bf16", "cuda") is None and ADDMM.canonical(key, c) == c
            assert set(c) <= set(space) and all(c[k] in space[k] for k in c), c
    assert ADDMM.starting_configs((1, 4608, 3584, 1), "fp16", "cpu") == []


def test_streamk_variant_names_and_runs_with_the_bias():
    """Stream-K takes OCCUPANCY (its programs per SM), the other persistent knobs are pinned; its
    runner under the interpreter adds the bias once, the tiles split between programs included."""
    key = (40, 64, 96, 1)
    c = ADDMM.canonical((512, 4608, 3584, 1), splitk_cfg(variant=STREAMK, OCCUPANCY=2, FLATTEN=1, SPLIT_K=4))
    assert (c["OCCUPANCY"], c["FLATTEN"], c["SPLIT_K"]) == (2, 0, 1)
    assert ADDMM.source_hash({"variant": STREAMK}) == MM.source_hash({"variant": STREAMK})
    inputs = ADDMM.make_inputs(key, "fp16", "cpu", 1, seed=5)
    inputs.sets[0][0].add_(10.0)
    out = ADDMM.own_runner(mm_config(splitk_cfg(variant=STREAMK, GROUP_M=2)))(inputs.sets[0], inputs.outs[0])
    ref = ADDMM.reference(inputs.sets[0])
    assert ((out.double() - ref).norm() / ref.norm()).item() < 5e-3 and (out.double() - ref).abs().max() < 1
