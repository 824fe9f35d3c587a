"""Which M ranges go to the split-K GEMM (pure, CPU) and the override itself (GPU only)."""
import pytest

from tests.tuner.inject.conftest import env_of
from tuner.inject.mm_override import build_table, install_mm_overrides, lookup, splitk_plan


def rec(M, N=4608, K=3584, variant="splitk", split=4, dtype="bf16"):
    return {"kernel": "mm", "key": {"M": M, "N": N, "K": K}, "dtype": dtype,
            "config": {"variant": variant, "BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 128,
                       "GROUP_M": 8, "SPLIT_K": split, "num_warps": 4, "num_stages": 3},
            "environment": env_of(), "kernel_source_hash": "h"}


def test_plan_covers_ms_nearest_to_splitk_winners():
    recs = [rec(1, variant="fg_tma"), rec(16, split=4), rec(256, variant="fg_tma"),
            rec(64, N=512, split=2), rec(8, N=512, variant="fg_general"), rec(8, N=1024, variant="fg_tma")]
    plan = splitk_plan(recs, max_tokens=1000)
    assert set(plan) == {(4608, 3584, "bf16"), (512, 3584, "bf16")}  # no split-K winner for N=1024
    [(lo, hi, cfg)] = plan[(4608, 3584, "bf16")]
    # M=4: 4/1 == 16/4, a log-space tie goes to the smaller (1); M=64: 64/16 == 256/64 -> 16
    assert (lo, hi, cfg["SPLIT_K"]) == (5, 64, 4)
    [(lo2, hi2, _)] = plan[(512, 3584, "bf16")]
    assert (lo2, hi2) == (23, 1000)  # sqrt(8*64) ~ 22.6: from 23 the split-K record is nearer


def test_lookup_by_shape_and_m():
    table = build_table(splitk_plan([rec(1, variant="fg_tma"), rec(16), rec(256, variant="fg_tma")], 1000))
    assert lookup(table, 5, 4608, 3584, "bf16")["SPLIT_K"] == 4
    assert lookup(table, 64, 4608, 3584, "bf16") is not None
    assert lookup(table, 4, 4608, 3584, "bf16") is None
    assert lookup(table, 65, 4608, 3584, "bf16") is None
    assert lookup(table, 16, 4608, 4096, "bf16") is None
    assert lookup(table, 16, 4608, 3584, "fp16") is None


def test_conflicting_winners_raise():
    with pytest.raises(ValueError, match="two different mm winners"):
        splitk_plan([rec(16, split=2), rec(16, split=4)])


def test_install_without_splitk_is_noop_and_needs_gpu_otherwise():
    import torch

    h = install_mm_overrides([rec(16, variant="fg_tma")], max_tokens=64)
    assert h.lib is None and h.active == 0
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="need a CUDA GPU"):
            install_mm_overrides([rec(16)], max_tokens=64)


@pytest.mark.gpu
def test_override_routes_covered_shapes_to_splitk():
    import torch

    import kernels.triton_mm as tm

    calls = []
    real = tm.splitk_mm
    tm.splitk_mm = lambda a, b, cfg: calls.append((a.shape[0], cfg["SPLIT_K"])) or real(a, b, cfg)
    try:
        h = install_mm_overrides([rec(1, variant="fg_tma"), rec(16), rec(256, variant="fg_tma")], max_tokens=512)
        try:
            b = torch.randn(3584, 4608, device="cuda", dtype=torch.bfloat16)
            for M in (1, 16, 64, 100):
                a = torch.randn(M, 3584, device="cuda", dtype=torch.bfloat16)
                ref = (a.float() @ b.float())
                torch.testing.assert_close(torch.mm(a, b).float(), ref, atol=0.5, rtol=2e-2)
        finally:
            h.uninstall()
    finally:
        tm.splitk_mm = real
    assert calls == [(16, 4), (64, 4)]
