"""The descriptor probe's host-descriptor kernel under the Triton interpreter: the same product as
tuner's persistent kernel (device descriptors), bit for bit, and as torch, with and without a bias
and the subtiled epilogue, on partial tiles."""

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


# (the interpreter runs tl.range's flatten as a plain loop: the FLATTEN case checks the plumbing)
@pytest.mark.parametrize("has_bias, knobs", [(False, {}), (True, {"EPILOGUE_SUBTILE": 1}), (True, {"FLATTEN": 1})])
def test_host_descriptors_compute_what_the_persistent_kernel_does(has_bias, knobs):
    from kernels.persistent_mm import persistent_mm
    from tuner.benchmarks.desc_probe import host_desc_mm

    g = torch.Generator().manual_seed(0)
    M, N, K = 40, 72, 48  # partial tiles in M and N; three programs walk the 9 tiles
    a = torch.randn(M, K, generator=g, dtype=torch.float16)
    w = torch.randn(N, K, generator=g, dtype=torch.float16)
    bias = torch.randn(N, generator=g, dtype=torch.float16) if has_bias else None
    cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=2, **knobs)
    host = host_desc_mm(a, w, cfg, torch.empty(M, N, dtype=torch.float16), bias)
    device = persistent_mm(a, w.t(), cfg, out=torch.empty(M, N, dtype=torch.float16), bias=bias)
    assert torch.equal(host, device)
    ref = a.double() @ w.double().t() + (bias.double() if has_bias else 0)
    assert ((host.double() - ref).abs().max() / ref.abs().max()) < 2e-3
