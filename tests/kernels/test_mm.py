import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import UnknownOp, get_kernel  # noqa: E402
from kernels.base import KernelInputError  # noqa: E402
from kernels.triton_mm import splitk_mm  # noqa: E402
from tuner.tuning.search import grid_configs  # noqa: E402

MM = get_kernel("mm")


def test_unknown_op():
    with pytest.raises(UnknownOp, match="unknown op 'nope'"):
        get_kernel("nope")


@pytest.mark.parametrize("text,key", [("1,4608,3584", (1, 4608, 3584, 1)), ("16, 64, 32, kn", (16, 64, 32, 0)),
                                      ("2,8,8,nk", (2, 8, 8, 1))])
def test_parse_key(text, key):
    assert MM.parse_key(text) == key


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "0,4,4", "1,2,3,xx", "1,2,3,4,5"])
def test_parse_key_rejects(text):
    with pytest.raises(KernelInputError):
        MM.parse_key(text)


def test_preset_covers_the_llm_gemms():
    keys = MM.presets()["minicpmo-llm"]
    assert len(keys) == 30
    assert (1, 4608, 3584, 1) in keys and (8192, 151700, 3584, 1) in keys and (64, 3584, 18944, 1) in keys


def cfg(**kw):
    base = dict(variant="splitk", BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1, SPLIT_K=1, num_warps=4,
                num_stages=2)
    return base | kw


def test_canonical_drops_what_cannot_matter():
    key = (1, 4608, 3584, 1)
    assert MM.canonical(key, cfg(GROUP_M=8))["GROUP_M"] == 1  # one row of tiles
    fg = MM.canonical(key, cfg(variant="fg_tma", SPLIT_K=4, GROUP_M=1))
    assert fg["SPLIT_K"] == 1 and fg["GROUP_M"] == 8  # what FlagGems' cache can hold


def test_constraints_before_compiling():
    key = (1, 4608, 3584, 1)
    assert MM.invalid_reason(key, cfg(), "bf16", "cuda") is None
    assert "BLOCK_M" in MM.invalid_reason(key, cfg(BLOCK_M=256), "bf16", "cuda")
    assert "shared memory" in MM.invalid_reason((4096, 4096, 4096, 1), cfg(BLOCK_M=256, BLOCK_N=256, BLOCK_K=128,
                                                                           num_stages=5, num_warps=8), "bf16", "cuda")
    assert "SPLIT_K" in MM.invalid_reason((1, 64, 64, 1), cfg(SPLIT_K=16, BLOCK_K=32), "fp16", "cpu")
    assert "variant" in MM.invalid_reason(key, cfg(variant="fg_tma"), "fp16", "cpu")


def test_space_is_a_superset_of_flaggems_hopper_list():
    space = MM.space((2048, 4608, 3584, 1), "bf16", "cuda")
    assert space["variant"] == ("fg_tma", "splitk")
    assert {32, 64, 128, 256} <= set(space["BLOCK_M"]) and {32, 64, 128} <= set(space["BLOCK_N"])
    assert {32, 64, 128} <= set(space["BLOCK_K"]) and {2, 3, 4} <= set(space["num_stages"])
    assert {4, 8} <= set(space["num_warps"])
    assert MM.space((64, 4609, 3584, 1), "bf16", "cuda")["variant"] == ("fg_general", "splitk")


def test_grid_is_deduplicated_and_valid():
    key = (8, 64, 64, 1)
    grid = grid_configs(MM, key, "fp16", "cpu")
    texts = {tuple(sorted(c.items())) for c in grid}
    assert len(texts) == len(grid) > 10
    assert all(MM.invalid_reason(key, c, "fp16", "cpu") is None for c in grid)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.float32, 1e-5)])
@pytest.mark.parametrize("M,N,K,bt", [(1, 96, 200, True), (5, 64, 128, False), (33, 80, 96, True)])
@pytest.mark.parametrize("split_k", [1, 3])
def test_splitk_mm_matches_torch(dtype, tol, M, N, K, bt, split_k):
    g = torch.Generator().manual_seed(M * N + K)
    a = torch.randn(M, K, generator=g).to(dtype)
    b = (torch.randn(N, K, generator=g).t() if bt else torch.randn(K, N, generator=g)).to(dtype)
    out = torch.full((M, N), float("nan"), dtype=dtype)
    splitk_mm(a, b, cfg(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, SPLIT_K=split_k), out=out)
    ref = a.double() @ b.double()
    assert not out.isnan().any()
    assert ((out.double() - ref).norm() / ref.norm()).item() < tol
