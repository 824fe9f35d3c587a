"""bmm: key, layouts, presets, space, constraints, canonical and reference on the CPU; FlagGems'
own config list, LibTuner key and kernel source read from the real flag_gems in a subprocess.
The runner is checked on the H100 in tests/gpu/test_bmm_gpu.py; the persistent variant's batched
kernel runs here under the interpreter."""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import get_kernel  # noqa: E402
from kernels.base import KernelInputError  # noqa: E402
from kernels.bmm import CONFIG_KEYS, NO_CPU, SPACE, VARIANT, operand_strides  # noqa: E402
from kernels.own_variants import PERSISTENT  # noqa: E402
from tests.conftest import needs_flag_gems, result, run_py  # noqa: E402
from tuner.tuning.search import grid_configs  # noqa: E402

BMM = get_kernel("bmm")


def cfg(**kw):
    return {"variant": VARIANT, "TILE_M": 32, "TILE_N": 128, "TILE_K": 32, "GROUP_M": 2,
            "num_warps": 4, "num_stages": 3} | kw


def test_parse_key():
    assert BMM.parse_key("8,64,128,1024") == (8, 64, 128, 1024, 0)
    assert BMM.parse_key("1024, 10, 3584, 3584, LINEAR") == (1024, 10, 3584, 3584, 1)
    assert BMM.parse_key("8,64,128,1024,bmm") == (8, 64, 128, 1024, 0)
    assert BMM.parse_key("1024,10,3584,3584,1") == (1024, 10, 3584, 3584, 1)  # as the tables print it
    for bad, msg in [("8,64,128", "BATCH,M,N,K"), ("a,b,c,d", "integers"), ("0,1,2,3", "positive"),
                     ("1,2,3,4,kn", "layout"), ("1,2,3,4,2", "layout"), ("1,2,3,4,5,6", "BATCH,M,N,K")]:
        with pytest.raises(KernelInputError, match=msg):
            BMM.parse_key(bad)


def test_presets_are_the_resampler_projection_and_the_prefill_lm_head():
    p = BMM.presets()
    # k/v over the 1024 positions, q over the 64 queries, for 1, 4 and 10 slices
    assert p["minicpmo-resampler"] == [(b, s, 3584, 3584, 1) for b in (1024, 64) for s in (1, 4, 10)]
    assert p["minicpmo-llm"] == [(1, 1, 151700, 3584, 1)]
    assert p["minicpmo"] == p["minicpmo-resampler"] + p["minicpmo-llm"]


def test_cpu_has_no_implementation():
    key = (8, 64, 128, 1024, 0)
    assert BMM.devices == ("cuda",)
    assert BMM.invalid_reason(key, cfg(), "bf16", "cpu") == NO_CPU
    with pytest.raises(KernelInputError, match="needs an NVIDIA GPU"):
        BMM.runner(key, cfg(), "bf16", "cpu")
    assert BMM.untuned_configs(key, "bf16", "cpu") == []
    assert set(BMM.baselines(key, "bf16", "cpu")) == {"native"}


def test_constraints():
    key = (1024, 10, 3584, 3584, 1)
    assert BMM.invalid_reason(key, cfg(), "bf16", "cuda") is None
    # FlagGems' largest tile (128 x 128 x 32) stays reachable at M=10; 256 does not
    assert BMM.invalid_reason(key, cfg(TILE_M=128), "bf16", "cuda") is None
    assert "TILE_M=256 exceeds the padded M (16)" in BMM.invalid_reason(key, cfg(TILE_M=256, num_warps=8),
                                                                       "bf16", "cuda")
    assert "TILE_K=128" in BMM.invalid_reason((4, 16, 64, 40, 0), cfg(TILE_K=128), "bf16", "cuda")
    big = cfg(TILE_M=256, TILE_N=256, TILE_K=128, num_warps=8, num_stages=5)
    assert "shared memory" in BMM.invalid_reason((2, 4096, 4096, 4096, 0), big, "bf16", "cuda")
    assert "registers" in BMM.invalid_reason((2, 4096, 4096, 4096, 0), cfg(TILE_M=256, TILE_N=256), "bf16", "cuda")
    assert "not fg_bmm" in BMM.invalid_reason(key, cfg(variant="splitk"), "bf16", "cuda")
    assert "unknown layout 7" in BMM.invalid_reason((1, 2, 3, 4, 7), cfg(), "bf16", "cuda")


def test_grid_is_valid_and_canonical():
    for key in [*BMM.presets()["minicpmo"], (280, 64, 1024, 128, 0)]:
        valid = grid_configs(BMM, key, "bf16", "cuda")
        assert len(valid) > 100, key
        assert all(BMM.canonical(key, c) == c for c in valid)
        space = BMM.space(key, "bf16", "cuda")
        # lm_head's N = 151700 rows are not 16-byte multiples: FlagGems' kernel only
        assert space == {"variant": (VARIANT,), **SPACE} if key[2] == 151700 else \
            space == {"variant": (VARIANT, PERSISTENT), **SPACE, **BMM.own_space}
    # one row of tiles: GROUP_M cannot matter and is folded to 1
    assert BMM.canonical((8, 10, 64, 64, 0), cfg(TILE_M=16, GROUP_M=8))["GROUP_M"] == 1
    assert BMM.canonical((8, 100, 64, 64, 0), cfg(TILE_M=16, GROUP_M=8))["GROUP_M"] == 8
    assert grid_configs(BMM, (8, 64, 128, 1024, 0), "bf16", "cpu") == []


@pytest.mark.parametrize("layout", [0, 1])
def test_inputs_reference_and_native(layout):
    key = (6, 5, 24, 40, layout)
    inputs = BMM.make_inputs(key, "fp32", "cpu", 2, seed=0)
    a, b = inputs.sets[0]
    assert a.shape == (6, 5, 40) and b.shape == (6, 40, 24) and inputs.outs[0].shape == (6, 5, 24)
    assert (a.stride(), b.stride()) == operand_strides(key)
    if layout:  # the resampler's F.linear: a permuted sequence-first input, one weight for every batch
        assert a.permute(1, 0, 2).is_contiguous() and b.stride(0) == 0
    assert not torch.equal(inputs.sets[0][0], inputs.sets[1][0])
    ref = BMM.reference(inputs.sets[0])
    assert ref.dtype == torch.float64
    torch.testing.assert_close(ref, torch.bmm(a.double(), b.double()))
    out = inputs.outs[0]
    BMM.baselines(key, "fp32", "cpu")["native"](inputs.sets[0], out)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    weight_elems = 40 * 24 if layout else 6 * 40 * 24
    assert BMM.bytes_per_set(key, "bf16") == (6 * 5 * 40 + weight_elems + 6 * 5 * 24) * 2
    assert BMM.flops(key) == 2 * 6 * 5 * 24 * 40


@needs_flag_gems
def test_space_holds_flaggems_list_and_its_libtuner(tmp_path):
    """FlagGems' own bmm list is inside the space and valid for every preset key; its LibTuner
    key is what the module docstring says; the kernel source hash is stable across processes."""
    fg_env = {"GEMS_VENDOR": "nvidia", "ARCH": "sm_90", "HOME": str(tmp_path),
              "FLAGGEMS_DB_URL": f"sqlite:///{tmp_path / 'flaggems.db'}"}
    code = """
        import json
        from kernels import get_kernel
        from kernels.bmm import as_config, flag_gems_bmm_module
        from kernels.flaggems_ops import libtuner
        k = get_kernel("bmm")
        t = libtuner(flag_gems_bmm_module().bmm_kernel)
        keys = k.presets()["minicpmo"] + [(280, 64, 1024, 128, 0), (1, 64, 512, 1, 0)]
        print("RESULT", json.dumps({
            "configs": [as_config(c) for c in t.configs], "hooks": [c.pre_hook is not None for c in t.configs],
            "key_args": t.keys, "strategy": [s.__name__ for s in t.strategy],
            "reasons": sorted({str(k.invalid_reason(key, as_config(c), dt, "cuda"))
                               for key in keys for c in t.configs for dt in ("bf16", "fp16", "fp32")}),
            "hash": k.source_hash({"variant": "fg_bmm"}), "hash_none": k.source_hash()}))
    """
    r = result(run_py(code, fg_env))
    assert len(r["configs"]) == 12 and not any(r["hooks"])
    assert r["key_args"] == ["M", "N", "K", "stride_am", "stride_bk"]
    assert r["strategy"] == ["log2_strategy"] * 3 + ["align32_strategy"] * 2
    for c in r["configs"]:
        assert all(c[n] in SPACE[n] for n in CONFIG_KEYS), c
    assert r["reasons"] == ["None"]
    # a record's hash: FlagGems' function; a study's (no config): every module of the op
    assert len(r["hash"]) == 64 and len(r["hash_none"]) == 16 and not r["hash"].startswith(r["hash_none"])
    again = result(run_py(code, fg_env))
    assert (again["hash"], again["hash_none"]) == (r["hash"], r["hash_none"])


def pcfg(**kw):
    return {"variant": PERSISTENT, "TILE_M": 16, "TILE_N": 32, "TILE_K": 32, "GROUP_M": 2, "num_warps": 4,
            "num_stages": 2, "OCCUPANCY": 1, "WARP_SPECIALIZE": 0, "FLATTEN": 0} | kw


def test_persistent_variant_constraints_and_names():
    key = (1024, 10, 3584, 3584, 1)
    assert BMM.invalid_reason(key, pcfg(), "bf16", "cuda") is None
    assert BMM.invalid_reason(key, pcfg(), "bf16", "cpu") == NO_CPU
    assert "warpgroups" in BMM.invalid_reason(key, pcfg(num_warps=2), "bf16", "cuda")
    assert "variant" in BMM.invalid_reason((1, 1, 151700, 3584, 1), pcfg(), "bf16", "cuda")
    assert BMM.mm_config(pcfg())["BLOCK_M"] == 16 and BMM.mm_config(pcfg())["GROUP_M"] == 2
    # FlagGems' configs keep their GROUP_M; the persistent knobs are pinned for them
    fg = BMM.canonical((8, 100, 64, 64, 0), cfg(GROUP_M=4) | {"OCCUPANCY": 2, "FLATTEN": 1})
    assert fg["GROUP_M"] == 4 and fg["OCCUPANCY"] == 1 and fg["FLATTEN"] == 0
    starts = BMM.starting_configs(key, "bf16", "cuda")
    assert starts and all(BMM.invalid_reason(key, BMM.canonical(key, c), "bf16", "cuda") is None for c in starts)
    # the resampler's 1024 products of 10 rows on one weight: tiles judged on 1024 rows
    # (persistent_bmm.batch_as_rows), so 128-row tiles, and GROUP_M over their 8 rows of tiles
    assert BMM._mm_key(key) == (1024, 3584, 3584, 1) and BMM._mm_key((10, 1024, 3584, 3584, 0))[0] == 1024
    assert max(c["TILE_M"] for c in starts) >= 128
    assert BMM.invalid_reason(key, pcfg(TILE_M=128, TILE_N=128, TILE_K=64, num_warps=8), "bf16", "cuda") is None
    assert BMM.canonical(key, pcfg(TILE_M=128, GROUP_M=4))["GROUP_M"] == 4
    assert "BLOCK_M" in BMM.invalid_reason((2, 10, 3584, 3584, 1), pcfg(TILE_M=128), "bf16", "cuda")


@pytest.mark.parametrize("batch,M", [(3, 20), (20, 3)])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("knobs", [dict(), dict(GROUP_M=1, FLATTEN=1, WARP_SPECIALIZE=1)])
def test_persistent_runner_matches_the_reference(batch, M, layout, knobs):
    """Both layouts bmm meets (contiguous batches; F.linear's permuted input and one shared weight),
    several (batch, tile) pairs per program, edge tiles in M, N and K; 20 products of 3 rows on a
    shared weight walked as 3 of 20 rows (batch_as_rows), C through its strided descriptor."""
    key = (batch, M, 40, 48, layout)
    inputs = BMM.make_inputs(key, "fp16", "cpu", 1, seed=1)
    out = inputs.outs[0].fill_(float("nan"))
    BMM.own_runner(BMM.mm_config(pcfg(**knobs)))(inputs.sets[0], out)
    ref = BMM.reference(inputs.sets[0])
    assert not out.isnan().any()
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-3
