"""tuner's persistent fp8 GEMM (kernels/fp8_mm.py) under the interpreter (3 programs: it has no
SMs, so programs walk several tiles): partial tiles, grouped order, the subtiled epilogue, the
bias, and the tensors it refuses. Its GPU tests are in tests/gpu/test_scaled_mm_gpu.py."""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.fp8_mm import fp8_mm  # noqa: E402
from kernels.persistent_mm import Unsupported  # noqa: E402
from kernels.scaled_mm import quantize  # noqa: E402


def _operands(M, N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, sa = quantize(torch.randn(M, K, generator=g))
    w, sw = quantize(torch.randn(N, K, generator=g) * 0.02)  # a weight's scale: far from the activation's
    return a, w, sa, sw


def _exact(a, w, sa, sw, bias=None):
    out = (a.double() @ w.double().t()) * (sa.double() * sw.double())
    return out + bias.double() if bias is not None else out


@pytest.mark.parametrize("M,N,K,config", [
    (16, 64, 64, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1)),   # 2 tiles, 2 K steps
    (40, 96, 160, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=2)),  # partial M, N and K tiles, 9 tiles
    (128, 64, 96, dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, GROUP_M=4, EPILOGUE_SUBTILE=1)),
    (48, 128, 64, dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=2, OCCUPANCY=2, WARP_SPECIALIZE=1)),
    (40, 96, 160, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, PRECISE_ACC=1)),  # the interpreter: one sum
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_the_exact_product_of_the_fp8_values(M, N, K, config, with_bias):
    a, w, sa, sw = _operands(M, N, K, seed=M + N + K)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(1)).to(torch.float16) if with_bias else None
    out = fp8_mm(a, w.t(), sa, sw, config, bias=bias, out_dtype=torch.float16)
    exact = _exact(a, w, sa, sw, bias)
    # fp32 accumulation of exact fp8 products, one rounding to fp16 (half an ulp: 2^-11 relative)
    assert ((out.double() - exact).abs() <= exact.abs() * 2 ** -11 + 1e-6).all()
    assert out.dtype == torch.float16 and not out.isnan().any()


def test_bf16_output_is_close_to_torchs_scaled_mm():
    a, w, sa, sw = _operands(40, 96, 160)
    out = fp8_mm(a, w.t(), sa, sw, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2))
    native = torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sw, out_dtype=torch.bfloat16)
    exact = _exact(a, w, sa, sw)
    # the interpreter casts to bf16 by truncation (under one ulp: 2^-7 of the value), torch rounds
    # (half an ulp)
    assert out.dtype == torch.bfloat16
    assert ((out.double() - exact).abs() <= exact.abs() * 2 ** -7 + 1e-6).all()
    assert ((out.double() - native.double()).abs() <= exact.abs() * 2 ** -6 + 1e-6).all()


def test_writes_into_the_given_output():
    a, w, sa, sw = _operands(16, 64, 64)
    out = torch.full((16, 64), float("nan"), dtype=torch.float16)
    assert fp8_mm(a, w.t(), sa, sw, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32), out=out) is out
    assert not out.isnan().any()


@pytest.mark.parametrize("change, message", [
    (lambda a, b, sa, sw: (a.to(torch.float16), b, sa, sw), "needs float8_e4m3fn A and B"),
    (lambda a, b, sa, sw: (a, b.t().contiguous().t().contiguous(), sa, sw), "K-major"),  # B stored K x N
    (lambda a, b, sa, sw: (a, b, sa.repeat(16), sw), "one fp32 scale per tensor"),  # per-token scales
    (lambda a, b, sa, sw: (a, b, sa.double(), sw), "one fp32 scale per tensor"),
    (lambda a, b, sa, sw: (a[:, :40].contiguous(), b[:40].t().contiguous().t(), sa, sw),
     "16-byte"),  # rows of 40 bytes: TMA cannot read them
    (lambda a, b, sa, sw: (a[:, :48], b, sa, sw), "matching K"),
])
def test_refuses_what_it_cannot_read(change, message):
    a, w, sa, sw = _operands(16, 64, 64)
    args = change(a, w.t(), sa, sw)
    with pytest.raises(Unsupported, match=message):
        fp8_mm(*args, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32))


def test_refuses_an_fp32_output():
    a, w, sa, sw = _operands(16, 64, 64)
    with pytest.raises(Unsupported, match="bf16 or fp16 output"):
        fp8_mm(a, w.t(), sa, sw, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32), out=torch.empty(16, 64))
