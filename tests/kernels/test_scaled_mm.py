"""The fp8 GEMM op (kernels/scaled_mm.py): its space and constraints, presets, inputs and reference,
FlagGems' real fp8 kernel read from the flag_gems package, and a CPU tune through the real flow
and SQLite."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import get_kernel  # noqa: E402
from kernels.scaled_mm import FP8, FP8_PINNED, fg_takes, fp8_starts, quantize  # noqa: E402
from tests.conftest import needs_flag_gems, result, run_py  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OP = get_kernel("scaled_mm")


def _cfg(**kw):
    return {"variant": "persistent", "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4,
            "num_stages": 4, **FP8_PINNED} | kw


def test_variants_by_device_and_tma():
    assert OP.space((16, 64, 64), FP8, "cpu")["variant"] == ("persistent",)
    assert OP.space((16, 4608, 3584), FP8, "cuda")["variant"] == ("fg_smm", "persistent")
    assert OP.space((16, 4608, 3592), FP8, "cuda")["variant"] == ("fg_smm",)  # K rows of 3592 bytes: not TMA's


def test_constraints():
    key = (16, 4608, 3584)
    assert OP.invalid_reason(key, _cfg(), FP8, "cuda") is None
    assert "runs fp8_w8a8" in OP.invalid_reason(key, _cfg(), "bf16", "cuda")
    assert "BLOCK_M=32 exceeds the padded M (16)" == OP.invalid_reason(key, _cfg(BLOCK_M=32), FP8, "cuda")
    assert "shared memory" in OP.invalid_reason((512, 4608, 3584), _cfg(BLOCK_M=256, BLOCK_N=256, BLOCK_K=256),
                                                FP8, "cuda")
    assert "2 programs per SM" in OP.invalid_reason((512, 4608, 3584), _cfg(BLOCK_M=128, BLOCK_N=128, num_stages=4,
                                                                            OCCUPANCY=2), FP8, "cuda")
    assert "warpgroups" in OP.invalid_reason(key, _cfg(num_warps=2), FP8, "cuda")
    assert "FLATTEN" in OP.invalid_reason(key, _cfg(WARP_SPECIALIZE=1, FLATTEN=1), FP8, "cuda")
    assert OP.invalid_reason(key, _cfg(WARP_SPECIALIZE=1), FP8, "cuda") is None
    assert "same binary" in OP.invalid_reason(key, _cfg(WARP_SPECIALIZE=1, num_warps=8), FP8, "cuda")
    # PRECISE_ACC keeps a second accumulator: 128x256 over 8 warps spills with it, not without
    wide = _cfg(BLOCK_M=128, BLOCK_N=256, num_warps=8, num_stages=3)
    assert OP.invalid_reason((512, 4608, 3584), wide, FP8, "cuda") is None
    assert "PRECISE_ACC" in OP.invalid_reason((512, 4608, 3584), wide | {"PRECISE_ACC": 1}, FP8, "cuda")
    assert OP.invalid_reason((512, 4608, 3584), wide | {"BLOCK_N": 128, "PRECISE_ACC": 1}, FP8, "cuda") is None
    assert "2 warps" in OP.invalid_reason((512, 4608, 3584), _cfg(variant="fg_smm", BLOCK_M=128, BLOCK_N=64,
                                                                 num_warps=2), FP8, "cuda")
    assert "spills" in OP.invalid_reason((512, 4608, 3584), _cfg(BLOCK_M=128, BLOCK_N=256, BLOCK_K=32,
                                                                 num_stages=2), FP8, "cuda")
    assert "registers" in OP.invalid_reason((512, 4608, 3584), _cfg(variant="fg_smm", BLOCK_M=256, BLOCK_N=256,
                                                                    BLOCK_K=32, num_stages=2), FP8, "cuda")
    assert "does not serve" in OP.invalid_reason(key, _cfg(variant="fg_smm"), FP8, "cpu")


def test_every_warm_start_is_valid_on_the_llm_keys():
    for key in OP.presets()["vllm-fp8-tp1"]:
        starts = OP.starting_configs(key, FP8, "cuda")
        assert len(starts) == (4 if key[0] >= 256 else 3)
        assert {c["PRECISE_ACC"] for c in starts} == {0, 1}  # both accumulations measured early
        assert all(OP.invalid_reason(key, c, FP8, "cuda") is None for c in starts), key
    assert fp8_starts(4096)[0]["BLOCK_K"] == 128  # fp8: 128 bytes of K per tile row
    assert OP.starting_configs((16, 64, 64), FP8, "cpu") == []


def test_canonical_pins_what_a_variant_does_not_take():
    fg = OP.canonical((64, 4608, 3584), _cfg(variant="fg_smm", GROUP_M=8, OCCUPANCY=2, WARP_SPECIALIZE=1,
                                             PRECISE_ACC=1))
    assert fg["GROUP_M"] == 1 and all(fg[k] == v for k, v in FP8_PINNED.items())
    assert OP.canonical((16, 4608, 3584), _cfg(GROUP_M=8))["GROUP_M"] == 1  # one row of tiles
    assert OP.canonical((512, 4608, 3584), _cfg(GROUP_M=8))["GROUP_M"] == 8


def test_presets_are_the_fp8_layers_of_each_tensor_parallel_rank():
    p = OP.presets()
    assert set(p) == {"vllm-fp8-tp1", "vllm-fp8-tp2", "vllm-fp8-tp4", "vllm-fp8-tp8"}
    tp1, tp2 = p["vllm-fp8-tp1"], p["vllm-fp8-tp2"]
    assert len(tp1) == 28 and all(len(k) == 3 for k in tp1)  # qkv, o, gate_up, down at 7 M: lm_head stays bf16
    assert (1, 4608, 3584) in tp1 and (1, 3584, 18944) in tp1 and (1, 2304, 3584) in tp2 and (1, 3584, 9472) in tp2


def test_flaggems_untuned_pick_only_where_its_entry_runs():
    """FlagGems' cutlass_scaled_mm asserts 16-element row strides: elsewhere its autotuner never ran
    the key, so its best_config is another key's and is no warm start."""
    assert fg_takes((16, 4608, 3584)) and not fg_takes((16, 4600, 3584)) and not fg_takes((16, 4608, 3592))
    assert OP.untuned_configs((16, 4600, 3584), FP8, "cuda") == []  # answered before FlagGems is imported


def test_quantize_scales_to_e4m3s_range():
    x = torch.randn(64, 128) * 5
    q, s = quantize(x)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.numel() == 1
    assert q.float().abs().max().item() == 448.0  # the largest element lands on e4m3's largest value
    assert ((q.float() * s - x).abs() <= x.abs() * 2 ** -4 + s * 2 ** -9).all()  # 3 mantissa bits


def test_inputs_reference_and_runners_agree_on_the_cpu():
    from tuner.tuning.measure import check, wrong_result

    key = (40, 96, 160)
    inputs = OP.make_inputs(key, FP8, "cpu", 2, seed=0)
    a, b, sa, sb = inputs.sets[0]
    assert a.dtype == b.dtype == torch.float8_e4m3fn and b.stride(0) == 1 and inputs.outs[0].dtype == torch.bfloat16
    assert not torch.equal(inputs.sets[0][0].float(), inputs.sets[1][0].float())
    assert OP.bytes_per_set(key, FP8) == 40 * 160 + 96 * 160 + 2 * 40 * 96
    for name, run in {**OP.baselines(key, FP8, "cpu"), "persistent": OP.runner(key, _cfg(BLOCK_M=16, BLOCK_N=32,
                                                                                     BLOCK_K=32), FP8, "cpu")}.items():
        assert wrong_result(OP, check(OP, run, inputs), FP8) is None, name
    assert set(OP.baselines(key, FP8, "cpu")) == {"native"}  # FlagGems and fast accumulation: GPU only


def test_a_wrong_tile_fails_the_check():
    from tuner.tuning.measure import check, wrong_result

    key = (64, 64, 64)
    inputs = OP.make_inputs(key, FP8, "cpu", 1, seed=0)
    run = OP.runner(key, _cfg(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32), FP8, "cpu")

    def zeroed_tile(args, out):
        run(args, out)
        out[:16, :16] = 0

    assert "wrong result" in wrong_result(OP, check(OP, zeroed_tile, inputs), FP8)


def test_source_hash_is_the_running_kernels():
    from kernels.base import jit_source_hash

    assert OP.source_hash(_cfg()) == jit_source_hash("kernels.fp8_mm")
    assert OP.source_hash(_cfg()) != jit_source_hash("kernels.persistent_mm")


@needs_flag_gems
def test_flaggems_fp8_kernel_is_launched_as_it_declares(fg_env):
    """FlagGems 5.0.2's per-tensor fp8 kernel, read from the real package: the arguments tuner's
    runner passes, and every tile its autotuner can pick is a valid config of the space at M=1."""
    out = result(run_py("""
        import json
        from kernels.flaggems_ops import jit_function
        from kernels.scaled_mm import ScaledMM, _fg_module
        m = _fg_module()
        jit = jit_function(m._pertensor_or_pertoken_smm_kernel)
        print("RESULT " + json.dumps({"args": jit.arg_names,
                                      "tiles": [c.kwargs for c in m._pertensor_or_pertoken_smm_kernel.configs],
                                      "hash": ScaledMM().source_hash({"variant": "fg_smm"})}))
    """, env=fg_env))
    assert out["args"] == ["c_ptr", "a_ptr", "b_ptr", "a_scale_ptr", "b_scale_ptr", "bias_ptr", "M", "N", "K", "_M_NPO2",
                           "stride_am", "stride_ak", "stride_bk", "stride_bn", "stride_cm", "stride_cn", "ACC_DTYPE",
                           "TILE_M", "TILE_N", "TILE_K", "IS_PER_TOKEN_A", "IS_PER_TOKEN_B"]
    assert len(out["hash"]) == 64
    for t in out["tiles"]:  # Triton's defaults: 4 warps, 3 stages
        cfg = _cfg(variant="fg_smm", BLOCK_M=t["TILE_M"], BLOCK_N=t["TILE_N"], BLOCK_K=t["TILE_K"], num_stages=3)
        for key in ((1, 4608, 3584), (16, 3584, 18944)):
            assert OP.invalid_reason(key, cfg, FP8, "cuda") is None, (t, key)


def test_tune_on_the_cpu_stores_an_fp8_record(tmp_path):
    db = tmp_path / "t.db"

    def cli(*args):
        return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, capture_output=True, text=True,
                              timeout=600)

    p = cli("tune", "--op", "scaled_mm", "--shape", "16,64,64", "--device", "cpu", "--trials", "3",
            "--db", f"sqlite:///{db}")
    assert p.returncode == 0, p.stderr
    import json

    (rec,) = json.loads(cli("db", "show", "--db", str(db), "--json").stdout)
    assert rec["kernel"] == "scaled_mm" and rec["dtype"] == FP8 and rec["key"] == {"M": 16, "N": 64, "K": 64}
    assert rec["config"]["variant"] == "persistent" and rec["native_us"] > 0 and rec["rel_error"] < 1e-2
    bad = cli("tune", "--op", "scaled_mm", "--shape", "16,64,64", "--device", "cpu", "--dtype", "bf16",
              "--db", f"sqlite:///{tmp_path / 'bad.db'}")
    assert bad.returncode == 2 and "use one of fp8_w8a8" in bad.stderr and not (tmp_path / "bad.db").exists()
