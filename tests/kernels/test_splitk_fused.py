"""Split-K with its reduction in the same launch (kernels/splitk_fused.py) under the interpreter:
the two-kernel split-K's result bit for bit, every element written, the counts back at zero."""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import get_kernel  # noqa: E402
from kernels.mm import FUSED_COUNT_SLOTS, FUSED_SPLITK_MODULE, own_module  # noqa: E402
from kernels.splitk_fused import counts_for, fused_splitk_mm  # noqa: E402
from kernels.triton_mm import splitk_mm  # noqa: E402
from tests.kernels.launch_spy import count_launches  # noqa: E402

CFG = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2)


@pytest.fixture
def launches(monkeypatch):
    """Counts of the fused kernel's launches and of the reduce kernel's (the two-kernel path):
    which kernels a call really ran, since both paths give the same bits."""
    import kernels.splitk_fused as fused_mod
    import kernels.triton_mm as two_mod

    return count_launches(monkeypatch, {"fused": (fused_mod, "mm_splitk_fused_direct"),
                                        "reduce": (two_mod, "splitk_reduce_direct")})


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("M,N,K,bt,split_k,group_m", [
    (1, 96, 200, True, 3, 1),     # decode: one row of tiles, K not a multiple of the split
    (5, 64, 128, False, 4, 1),    # B stored K x N
    (33, 80, 96, True, 2, 2),     # 3 x 3 tiles in grouped order, edge tiles in M and N
])
def test_equals_the_two_kernel_split_k_bit_for_bit(dtype, M, N, K, bt, split_k, group_m, launches):
    g = torch.Generator().manual_seed(M * N + K)
    a = torch.randn(M, K, generator=g).to(dtype)
    b = (torch.randn(N, K, generator=g).t() if bt else torch.randn(K, N, generator=g)).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype)
    cfg = CFG | dict(GROUP_M=group_m, SPLIT_K=split_k)
    for with_bias in (None, bias):
        two = splitk_mm(a, b, cfg, bias=with_bias)
        assert launches == {"fused": 0, "reduce": 1}
        # poisoned: an element the last split of its tile does not write stays NaN
        fused = torch.full((M, N), float("nan"), dtype=dtype)
        assert splitk_mm(a, b, cfg | {"FUSED_REDUCE": 1}, out=fused, bias=with_bias) is fused
        assert launches == {"fused": 1, "reduce": 1}  # one launch, no reduce kernel
        assert torch.equal(fused, two)
        launches.update(fused=0, reduce=0)
        assert int(counts_for(a.device).sum()) == 0  # lowered again for the next call
    ref = a.double() @ b.double() + bias.double()
    assert ((fused.double() - ref).norm() / ref.norm()).item() < (1e-3 if dtype == torch.float16 else 1e-5)


def test_refuses_bad_shapes_and_too_many_tiles():
    a, w = torch.randn(4, 64, dtype=torch.float16), torch.randn(32, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="incompatible"):
        fused_splitk_mm(a, w, CFG | {"SPLIT_K": 2})
    with pytest.raises(ValueError, match="bias must have shape"):
        fused_splitk_mm(a, w.t(), CFG | {"SPLIT_K": 2}, bias=torch.randn(31, dtype=torch.float16))
    mm = get_kernel("mm")
    key = (2048, 32768, 4096, 1)  # 128 x 1024 tiles of 16 x 32
    many = dict(variant="splitk", BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=1, SPLIT_K=2, num_warps=4,
                num_stages=2)
    assert 128 * 1024 > FUSED_COUNT_SLOTS
    assert "counts" in mm.invalid_reason(key, many | {"FUSED_REDUCE": 1}, "bf16", "cuda")
    assert mm.invalid_reason(key, many | {"FUSED_REDUCE": 0}, "bf16", "cuda") is None


def test_the_knob_is_an_identity_of_its_own_and_pinned_where_nothing_is_reduced():
    mm, addmm = get_kernel("mm"), get_kernel("addmm")
    split = dict(variant="splitk", BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1, SPLIT_K=4, num_warps=4,
                 num_stages=2)
    assert own_module(split | {"FUSED_REDUCE": 1}) == FUSED_SPLITK_MODULE
    assert own_module(split) == own_module(split | {"FUSED_REDUCE": 0}) == "kernels.triton_mm"  # stored before it
    fused_hash = mm.source_hash(split | {"FUSED_REDUCE": 1})
    assert fused_hash != mm.source_hash(split)
    assert addmm.source_hash({"variant": "splitk", "SPLIT_K": 4, "FUSED_REDUCE": 1}) == fused_hash
    key = (1, 96, 200, 1)
    assert mm.canonical(key, split | {"SPLIT_K": 1, "FUSED_REDUCE": 1})["FUSED_REDUCE"] == 0  # nothing to reduce
    fg = mm.canonical(key, split | {"variant": "fg_tma", "SPLIT_K": 4, "FUSED_REDUCE": 1})
    assert (fg["SPLIT_K"], fg["FUSED_REDUCE"]) == (1, 0)
    assert mm.canonical(key, split) == split  # a record without the knob keeps its identity


@pytest.mark.parametrize("op,config", [
    ("mm", dict(variant="splitk", BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=1, SPLIT_K=8, num_warps=4,
                num_stages=3)),
    ("addmm", dict(variant="splitk", BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=128, GROUP_M=1, SPLIT_K=4,
                   num_warps=2, num_stages=3, OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=0, EPILOGUE_SUBTILE=0)),
])
def test_a_split_k_winner_stored_before_the_knob_still_warm_starts(op, config):
    """Session 7's split-K winners lack FUSED_REDUCE; projected onto today's space (the key's
    `neighbour_winners` warm start) they are the two-kernel config, not a config the space refuses."""
    import optuna

    from tuner.tuning.candidates import Candidates

    kernel, key = get_kernel(op), (1, 4608 if op == "addmm" else 3584, 3584, 1)
    study = optuna.create_study()
    cands = Candidates(study, kernel, key, "bf16", "cuda", 9)
    assert cands.project(config)["FUSED_REDUCE"] == 0
    cands.enqueue_warm([config])
    (queued,) = study.get_trials(deepcopy=False)  # waiting: its params are the enqueued ones
    fixed = queued.system_attrs["fixed_params"]
    assert fixed["FUSED_REDUCE"] == 0 and fixed["SPLIT_K"] == config["SPLIT_K"]
