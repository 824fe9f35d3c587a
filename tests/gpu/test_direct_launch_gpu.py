"""On the GPU (`pytest -m gpu`): tuner's kernels launched again without Triton's dispatch
(kernels/direct_launch.py) give Triton's own launch's bits, take the direct path from the second
call of a specialisation on, compile anew for one they have not seen (another M, a misaligned
operand), and replay inside a CUDA graph."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

PERS = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3)
SPLIT = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=1, num_warps=4, num_stages=3)


def _launchers():
    """name -> (GEMM call, the DirectLaunch objects it goes through)."""
    import kernels.persistent_host_mm as host
    import kernels.persistent_mm as pm
    import kernels.splitk_fused as fused
    import kernels.streamk_mm as sk
    import kernels.triton_mm as tm

    return {
        "persistent": (lambda a, b, bias: pm.persistent_mm(a, b, PERS, bias=bias), [pm.persistent_mm_direct]),
        "persistent_host_desc": (lambda a, b, bias: pm.persistent_mm(a, b, PERS | {"HOST_DESC": 1}, bias=bias),
                                 [host.persistent_host_mm_direct]),
        "splitk": (lambda a, b, bias: tm.splitk_mm(a, b, SPLIT, bias=bias), [tm.mm_splitk_direct]),
        "splitk_sk4": (lambda a, b, bias: tm.splitk_mm(a, b, SPLIT | {"SPLIT_K": 4}, bias=bias),
                       [tm.mm_splitk_direct, tm.splitk_reduce_direct]),
        "splitk_fused_sk4": (lambda a, b, bias: tm.splitk_mm(a, b, SPLIT | {"SPLIT_K": 4, "FUSED_REDUCE": 1},
                                                             bias=bias), [fused.mm_splitk_fused_direct]),
        "streamk": (lambda a, b, bias: sk.streamk_mm(a, b, PERS | {"SK_TAIL_ONLY": 1}, bias=bias),
                    [sk.streamk_mm_direct]),
    }


def _inputs(M, N=4608, K=3584, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
    return a, w, torch.randn(N, device="cuda", dtype=torch.bfloat16, generator=g)


def _tritons_own(monkeypatch, call, *args):
    import kernels.direct_launch as dl

    monkeypatch.setattr(dl, "ENABLED", False)
    out = call(*args)
    monkeypatch.setattr(dl, "ENABLED", True)
    return out


@pytest.mark.parametrize("name", list(_launchers()))
@pytest.mark.parametrize("M", [16, 200])
def test_same_bits_as_tritons_launch_and_direct_from_the_second_call(name, M, monkeypatch):
    call, direct = _launchers()[name]
    a, w, bias = _inputs(M, seed=M)
    ref = _tritons_own(monkeypatch, call, a, w.t(), bias)
    before = [d.direct_calls for d in direct]
    outs = [call(a, w.t(), bias) for _ in range(3)]
    assert all(torch.equal(o, ref) for o in outs)
    grown = [d.direct_calls - b for d, b in zip(direct, before)]
    # the first call may be Triton's (a new key), the others not
    assert all(g >= 2 for g in grown), (grown, [(d._usable, len(d.compiled)) for d in direct])
    torch.testing.assert_close(ref.float(), torch.addmm(bias, a, w.t()).float(), rtol=2e-2, atol=0.5)


@pytest.mark.parametrize("name", ["splitk", "splitk_sk4"])
def test_a_misaligned_operand_is_a_new_specialisation(name, monkeypatch):
    """A 2 bytes off a 16-byte boundary: Triton compiles without the alignment hint; a direct
    launch of the aligned binary would read it wrong."""
    call, direct = _launchers()[name]
    a, w, bias = _inputs(32, seed=5)
    call(a, w.t(), bias), call(a, w.t(), bias)  # the aligned binary cached
    buf = torch.empty(a.numel() + 1, device="cuda", dtype=a.dtype)
    off = buf[1:].view_as(a)
    off.copy_(a)
    keys = len(direct[0].compiled)
    got = call(off, w.t(), bias)
    assert len(direct[0].compiled) == keys + 1
    assert torch.equal(got, _tritons_own(monkeypatch, call, off, w.t(), bias))
    torch.testing.assert_close(got.float(), torch.addmm(bias, a, w.t()).float(), rtol=2e-2, atol=0.5)


@pytest.mark.parametrize("name", ["persistent", "persistent_host_desc", "splitk_fused_sk4"])
def test_a_direct_launch_replays_in_a_cuda_graph(name):
    call, direct = _launchers()[name]
    a, w, bias = _inputs(64, seed=7)
    call(a, w.t(), bias), call(a, w.t(), bias)
    before = direct[0].direct_calls
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(a, w.t(), bias)
    assert direct[0].direct_calls == before + 1  # the capture took the direct path
    a.copy_(torch.randn_like(a))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, call(a, w.t(), bias))
