"""The stream-K GEMM under the interpreter (3 programs: TRITON_INTERPRET=1 has no SMs): tiles cut
between programs, whole data-parallel waves, programs with no iterations, both weight layouts,
the bias, and the flags left at zero for the next call. Its GPU tests are in
tests/gpu/test_persistent_mm_gpu.py."""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.streamk_mm import _flags, dp_tiles, programs_for, sk_programs, streamk_mm  # noqa: E402
from kernels.persistent_mm import Unsupported  # noqa: E402


def test_dp_tiles_leaves_one_to_two_waves_to_stream_k():
    assert dp_tiles(144, 132) == 0  # qkv at M=512 (128x128 tiles): both waves shared by K
    assert dp_tiles(264, 132) == 264  # whole waves: no partials to pay for
    assert dp_tiles(300, 132) == 132  # 2 waves + 36: the last 168 tiles stream-K
    assert dp_tiles(5, 132) == 0
    # SK_TAIL_ONLY: every whole wave data-parallel, the partial wave's tiles alone split
    assert dp_tiles(144, 132, tail_only=True) == 132 and dp_tiles(300, 132, tail_only=True) == 264
    assert dp_tiles(264, 132, tail_only=True) == 264 and dp_tiles(5, 132, tail_only=True) == 0
    assert programs_for(512, 4608, {"OCCUPANCY": 2}, 132) == 264 and programs_for(1, 1, {}, 132) == 132


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.float32, 1e-5)])
@pytest.mark.parametrize("M,N,K,bt,occ", [
    (16, 32, 512, True, 1),   # one tile, 16 K iterations over 3 programs: the finisher adds 2 partials
    (33, 96, 160, False, 2),  # 9 tiles x 5 iterations over 6 programs: tiles cut in two
    (64, 64, 64, True, 1),    # 16 tiles: 12 data-parallel (4 waves of 3 but the last), 4 stream-K
    (16, 32, 64, True, 1),    # 2 iterations over 3 programs: one program has none
    (40, 64, 96, False, 1),   # 6 tiles over 3 programs: whole waves, all data-parallel
    (16, 64, 160, True, 1),   # 2 tiles x 5 iterations as [0,4) [4,7) [7,10): program 1 posts its
                              # partial of tile 1 first, then finishes tile 0 with program 0's
])
def test_streamk_mm_matches_torch(dtype, tol, M, N, K, bt, occ):
    g = torch.Generator().manual_seed(M * N + K)
    a = torch.randn(M, K, generator=g).to(dtype)
    b = (torch.randn(N, K, generator=g).t() if bt else torch.randn(K, N, generator=g)).to(dtype)
    bias = (torch.randn(N, generator=g) + 4).to(dtype)
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, OCCUPANCY=occ, num_warps=4, num_stages=2)
    for with_bias in (False, True):
        out = torch.full((M, N), float("nan"), dtype=dtype)
        streamk_mm(a, b, config, out=out, bias=bias if with_bias else None)
        ref = a.double() @ b.double() + (bias.double() if with_bias else 0)
        assert not out.isnan().any()
        assert ((out.double() - ref).norm() / ref.norm()).item() < tol
        assert int(_flags(a.device, 3 * occ).sum()) == 0  # every partial consumed: ready for the next call


def test_streamk_mm_refuses_what_tma_cannot_read():
    a = torch.randn(8, 64, dtype=torch.float16)
    with pytest.raises(Unsupported, match="streamk_mm"):
        streamk_mm(a[:, 1:], torch.randn(63, 32, dtype=torch.float16), {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32})


@pytest.mark.parametrize("M,N,K,bt", [(16, 32, 512, True), (33, 96, 160, False), (64, 64, 64, True), (16, 64, 160, True)])
def test_host_descriptors_and_tail_only_give_the_same_bits(M, N, K, bt):
    """HOST_DESC (descriptors built here, C's block half a tile wide) runs the same instructions on
    the same data as the kernel's own descriptors: equal bit for bit. SK_TAIL_ONLY moves tiles from
    stream-K to whole-tile programs: 64x64 (16 tiles over 3 programs) then has 15 data-parallel
    tiles, not 12, and still matches torch; its flags are back at zero."""
    g = torch.Generator().manual_seed(M + N * K)
    a = torch.randn(M, K, generator=g).half()
    b = (torch.randn(N, K, generator=g).t() if bt else torch.randn(K, N, generator=g)).half()
    bias = torch.randn(N, generator=g).half()
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, OCCUPANCY=1, num_warps=4, num_stages=2)
    ref = a.double() @ b.double() + bias.double()
    for tail in (0, 1):
        device = streamk_mm(a, b, config | {"SK_TAIL_ONLY": tail}, bias=bias)
        host = torch.full((M, N), float("nan"), dtype=torch.float16)
        assert streamk_mm(a, b, config | {"SK_TAIL_ONLY": tail, "HOST_DESC": 1}, out=host, bias=bias) is host
        assert torch.equal(host, device)
        assert ((host.double() - ref).norm() / ref.norm()).item() < 1e-3
        assert int(_flags(a.device, 3).sum()) == 0


def test_host_descriptors_refuse_empty_operands():
    """TensorDescriptor asserts every dimension positive: Unsupported (the router serves it
    natively), not an AssertionError; the kernel's own descriptors run it."""
    a, b = torch.randn(0, 64, dtype=torch.float16), torch.randn(64, 32, dtype=torch.float16)
    config = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}
    with pytest.raises(Unsupported, match="non-empty"):
        streamk_mm(a, b, config | {"HOST_DESC": 1})
    assert streamk_mm(a, b, config).shape == (0, 32)


def test_sk_split_shares_the_tail_among_split_programs_a_tile():
    # qkv M=512 on 132 SMs with 128x128 tiles: 132 whole tiles, 12 split 4 ways by 48 programs
    assert sk_programs(144, 132, 132, 4) == 48 and sk_programs(144, 132, 132, 0) == 132
    assert sk_programs(144, 0, 132, 2) == 132  # more pieces than programs: every program
    assert sk_programs(264, 264, 132, 4) == 1  # no stream-K tile: one program, an empty range


@pytest.mark.parametrize("M,N,K,bt", [(16, 32, 512, True), (64, 64, 64, True), (48, 96, 320, False)])
def test_sk_split_matches_torch_and_leaves_the_flags_down(M, N, K, bt):
    """SK_SPLIT=2 (with or without SK_TAIL_ONLY, which it implies): the partial wave's tiles cut in
    two aligned pieces, the third program idle in stream-K (16x32x512: one tile of 16 iterations, 8 a
    piece; 64x64x64: 15 tiles data-parallel, the 16th cut in two)."""
    g = torch.Generator().manual_seed(M * K + N)
    a = torch.randn(M, K, generator=g).half()
    b = (torch.randn(N, K, generator=g).t() if bt else torch.randn(K, N, generator=g)).half()
    bias = torch.randn(N, generator=g).half()
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, OCCUPANCY=1, num_warps=4, num_stages=2,
                  SK_TAIL_ONLY=1, SK_SPLIT=2)
    ref = a.double() @ b.double() + bias.double()
    out = streamk_mm(a, b, config, bias=bias)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-3
    assert torch.equal(streamk_mm(a, b, config, bias=bias), out)  # the same bits again
    # SK_SPLIT implies SK_TAIL_ONLY (64x64x64 without it would split 4 tiles, not 1)
    alone = {k: v for k, v in config.items() if k != "SK_TAIL_ONLY"}
    assert torch.equal(streamk_mm(a, b, alone, bias=bias), out)
    assert int(_flags(a.device, 3).sum()) == 0
