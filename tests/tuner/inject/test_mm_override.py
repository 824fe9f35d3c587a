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


def test_override_routes_on_cpu_key_and_falls_back_to_previous_kernel():
    # The CPU dispatch key stands in for CUDA (same registration code path); the split-K
    # kernel is replaced by a recorder, the fallback is ATen's real CPU mm.
    import torch

    calls = []

    def splitk(a, b, cfg):
        calls.append((a.shape[0], cfg["SPLIT_K"]))
        return torch.full((a.shape[0], b.shape[1]), 7.0, dtype=a.dtype)

    recs = [rec(1, N=48, K=32, dtype="fp32"), rec(16, N=48, K=32, dtype="fp32"),
            rec(256, N=48, K=32, variant="fg_tma", dtype="fp32")]
    h = install_mm_overrides(recs, max_tokens=512, dispatch_key="CPU", splitk_mm=splitk)
    try:
        b = torch.randn(32, 48)
        outs = {M: torch.mm(torch.randn(M, 32), b) for M in (1, 16, 64, 65)}
        a = torch.randn(16, 32)
        assert torch.mm(a, torch.randn(32, 40)).shape == (16, 40)  # other N: not routed
        torch.testing.assert_close(torch.mm(a.double(), b.double()), a.double() @ b.double())
    finally:
        h.uninstall()
    assert calls == [(1, 4), (16, 4), (64, 4)]
    assert (outs[16] == 7).all() and not (outs[65] == 7).all()
    torch.testing.assert_close(torch.mm(a, b), (a.unsqueeze(-1) * b).sum(1))  # restored



def test_uncovered_keys_go_to_the_given_fallback():
    """With FlagGems enabled, keys no split-K winner covers go to FlagGems' own mm (here a
    recording fallback on the CPU key), not to the kernel registered before."""
    import torch

    seen = []

    def fallback(a, b):
        seen.append(tuple(a.shape) + tuple(b.shape))
        return (a.unsqueeze(-1) * b).sum(1)  # no aten::mm inside, as in FlagGems' Triton mm

    def splitk(a, b, cfg):
        return torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype)

    h = install_mm_overrides([rec(1, N=48, K=32, dtype="fp32")], max_tokens=8, dispatch_key="CPU",
                             splitk_mm=splitk, fallback=fallback)
    try:
        a, b = torch.randn(4, 32), torch.randn(32, 40)
        torch.testing.assert_close(torch.mm(a, b), (a.unsqueeze(-1) * b).sum(1))
        assert (torch.mm(torch.randn(2, 32), torch.randn(32, 48)) == 0).all()  # covered: split-K
    finally:
        h.uninstall()
    assert seen == [(4, 32, 32, 40)]

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
