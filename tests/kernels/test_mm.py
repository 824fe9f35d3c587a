import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import UnknownOp, get_kernel  # noqa: E402
from kernels.base import KernelInputError  # noqa: E402
from kernels.mm import PERSISTENT_PINNED  # noqa: E402
from kernels.persistent_mm import persistent_mm, unsupported  # noqa: E402
from kernels.triton_mm import splitk_mm  # noqa: E402
from tuner.tuning.search import grid_configs  # noqa: E402

MM = get_kernel("mm")


def test_unknown_op():
    with pytest.raises(UnknownOp, match="unknown op 'nope'"):
        get_kernel("nope")


@pytest.mark.parametrize("text,key", [("1,4608,3584", (1, 4608, 3584, 1)), ("16, 64, 32, kn", (16, 64, 32, 0)),
                                      ("2,8,8,nk", (2, 8, 8, 1)),
                                      # BT as `tune` and `db show` print it: a key pasted back parses
                                      ("16,64,64,1", (16, 64, 64, 1)), ("16,64,64,0", (16, 64, 64, 0))])
def test_parse_key(text, key):
    assert MM.parse_key(text) == key


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "0,4,4", "1,2,3,xx", "1,2,3,2", "1,2,3,4,5"])
def test_parse_key_rejects(text):
    with pytest.raises(KernelInputError):
        MM.parse_key(text)


def test_vllm_presets_are_one_ranks_shards():
    addmm = get_kernel("addmm")
    tp1, tp2 = MM.presets()["vllm-tp1"], MM.presets()["vllm-tp2"]
    assert len(tp1) == len(tp2) == 4 * 7
    # column-parallel gate_up and lm_head divide N, row-parallel o and down divide K
    assert {(n, k) for _, n, k, _ in tp2} == {(3584, 1792), (18944, 3584), (3584, 9472), (75872, 3584)}
    assert (1, 151744, 3584, 1) in tp1 and (4096, 37888, 3584, 1) in tp1
    assert {(n, k) for _, n, k, _ in addmm.presets()["vllm-tp2"]} == {(2304, 3584)}  # qkv: 14 + 2 + 2 heads
    for key in tp2 + addmm.presets()["vllm-tp8"]:  # every shard a key the op parses back
        assert MM.parse_key(",".join(map(str, key[:3]))) == key


def test_preset_covers_the_llm_gemms():
    keys = MM.presets()["minicpmo-llm"]
    assert len(keys) == 30
    assert (1, 4608, 3584, 1) in keys and (8192, 151700, 3584, 1) in keys and (64, 3584, 18944, 1) in keys


def test_resampler_preset_is_what_its_forward_called_on_the_h200():
    """results/gemm_h200/session12/resampler: the aten::mm calls of one forward (one image), with
    weights with and without grad; proj multiplies by its K x N parameter (layout kn)."""
    import json
    from pathlib import Path

    runs = Path(__file__).resolve().parents[2] / "tuner/benchmarks/results/gemm_h200/session12/resampler"
    seen = set()
    for f in runs.glob("run*.jsonl"):
        for line in f.read_text().splitlines():
            for op, (a, b) in ((c[0], c[1][:2]) for c in json.loads(line).get("gemm_calls", [])):
                if op == "aten::mm":
                    seen.add((a[0], b[1], a[1]))
    keys = MM.presets()["minicpmo-resampler"]
    assert {(m, n, k) for m, n, k, _ in keys} == seen
    assert all(MM.parse_key(",".join(map(str, k))) == k for k in keys)
    assert [bt for *_, bt in keys] == [1, 0, 1, 1]


def cfg(**kw):
    base = dict(variant="splitk", BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1, SPLIT_K=1, num_warps=4,
                num_stages=2)
    return base | kw


def test_canonical_drops_what_cannot_matter():
    key = (1, 4608, 3584, 1)
    assert MM.canonical(key, cfg(GROUP_M=8))["GROUP_M"] == 1  # one row of tiles
    fg = MM.canonical(key, cfg(variant="fg_tma", SPLIT_K=4, GROUP_M=1))
    assert fg["SPLIT_K"] == 1 and fg["GROUP_M"] == 8  # what FlagGems' cache can hold
    own = dict(OCCUPANCY=2, WARP_SPECIALIZE=1, FLATTEN=1, EPILOGUE_SUBTILE=1, HOST_DESC=1, SK_TAIL_ONLY=1, SK_SPLIT=4)
    split = MM.canonical(key, cfg(**own))
    assert all(split[k] == PERSISTENT_PINNED[k] for k in own)  # the persistent kernels' knobs
    pers = MM.canonical((512, 4608, 3584, 1), cfg(variant="persistent", SPLIT_K=4, GROUP_M=4, **own))
    assert pers["SPLIT_K"] == 1 and pers["GROUP_M"] == 4
    assert (pers["SK_TAIL_ONLY"], pers["SK_SPLIT"]) == (0, 0)  # stream-K's
    assert all(pers[k] == v for k, v in own.items() if k not in ("SK_TAIL_ONLY", "SK_SPLIT"))
    sk = MM.canonical((512, 4608, 3584, 1), cfg(variant="streamk", SPLIT_K=4, GROUP_M=4, **own))
    assert sk["SPLIT_K"] == 1 and (sk["OCCUPANCY"], sk["HOST_DESC"], sk["SK_TAIL_ONLY"], sk["SK_SPLIT"]) == (2, 1, 1, 4)
    assert (sk["WARP_SPECIALIZE"], sk["FLATTEN"], sk["EPILOGUE_SUBTILE"]) == (0, 0, 0)
    # SK_SPLIT implies SK_TAIL_ONLY (streamk_mm): one config, not two that run the same
    implied = MM.canonical((512, 4608, 3584, 1), cfg(variant="streamk", **own | {"SK_TAIL_ONLY": 0}))
    assert implied == sk | {"GROUP_M": implied["GROUP_M"]} and implied["SK_TAIL_ONLY"] == 1


def test_constraints_before_compiling():
    key = (1, 4608, 3584, 1)
    assert MM.invalid_reason(key, cfg(), "bf16", "cuda") is None
    assert "BLOCK_M" in MM.invalid_reason(key, cfg(BLOCK_M=256), "bf16", "cuda")
    assert "shared memory" in MM.invalid_reason((4096, 4096, 4096, 1), cfg(BLOCK_M=256, BLOCK_N=256, BLOCK_K=128,
                                                                           num_stages=5, num_warps=8), "bf16", "cuda")
    assert "SPLIT_K" in MM.invalid_reason((1, 64, 64, 1), cfg(SPLIT_K=16, BLOCK_K=32), "fp16", "cpu")
    # sm_90 compiles warp specialisation with FLATTEN as FLATTEN alone: measured once, not twice
    ws = cfg(variant="persistent", BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=2,
             OCCUPANCY=1, EPILOGUE_SUBTILE=0, WARP_SPECIALIZE=1, FLATTEN=1)
    assert "FLATTEN" in MM.invalid_reason((4096, 3584, 3584, 1), ws, "bf16", "cuda")
    assert MM.invalid_reason((4096, 3584, 3584, 1), ws | {"FLATTEN": 0}, "bf16", "cuda") is None
    assert MM.invalid_reason((4096, 3584, 3584, 1), ws, "bf16", "cuda", arch=10) is None
    # Triton 3.6 for sm_90 (results/aot_sm90): 8 warps make the binary without it, and the subtiled
    # epilogue at 128-row tiles does not compile; 64-row tiles with it compile to warp groups
    ws = ws | {"FLATTEN": 0}
    assert "same binary" in MM.invalid_reason((4096, 3584, 3584, 1), ws | {"num_warps": 8}, "bf16", "cuda")
    assert MM.invalid_reason((4096, 3584, 3584, 1), ws | {"num_warps": 8, "WARP_SPECIALIZE": 0}, "bf16", "cuda") is None
    big = ws | {"BLOCK_M": 128, "EPILOGUE_SUBTILE": 1}
    assert "does not compile" in MM.invalid_reason((4096, 3584, 3584, 1), big, "bf16", "cuda")
    assert MM.invalid_reason((4096, 3584, 3584, 1), big | {"EPILOGUE_SUBTILE": 0}, "bf16", "cuda") is None
    assert MM.invalid_reason((4096, 3584, 3584, 1), ws | {"EPILOGUE_SUBTILE": 1}, "bf16", "cuda") is None
    assert MM.invalid_reason((4096, 3584, 3584, 1), big, "bf16", "cuda", arch=10) is None
    assert "64x256" in MM.invalid_reason((4096, 3584, 3584, 1), ws | {"BLOCK_N": 256}, "bf16", "cuda")
    # a 128x256 fp32 accumulator over 4 warps is 256 registers a thread: it spills (results/aot_sm90),
    # unless warp specialisation splits it over warp groups; over 8 warps it fits
    wide = ws | {"BLOCK_M": 128, "BLOCK_N": 256, "WARP_SPECIALIZE": 0}
    for variant in ("persistent", "streamk"):
        assert "spills" in MM.invalid_reason((4096, 3584, 3584, 1), wide | {"variant": variant}, "bf16", "cuda")
    assert MM.invalid_reason((4096, 3584, 3584, 1), wide | {"WARP_SPECIALIZE": 1}, "bf16", "cuda") is None
    assert MM.invalid_reason((4096, 3584, 3584, 1), wide | {"num_warps": 8}, "bf16", "cuda") is None
    assert MM.invalid_reason((4096, 3584, 3584, 1), big | {"BLOCK_N": 256, "EPILOGUE_SUBTILE": 0}, "bf16", "cuda") is None
    assert "variant" in MM.invalid_reason(key, cfg(variant="fg_tma"), "fp16", "cpu")
    pers = cfg(variant="persistent", BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_stages=4, num_warps=8,
               **PERSISTENT_PINNED)
    # (128*64 + 64*256) * 2 * 4 = 196608 B of stages, plus the 64 KiB C tile: over 232448 B ...
    assert "shared memory" in MM.invalid_reason((4096, 4608, 3584, 1), pers, "bf16", "cuda")
    # ... half of it with the subtiled epilogue fits
    assert MM.invalid_reason((4096, 4608, 3584, 1), pers | {"EPILOGUE_SUBTILE": 1}, "bf16", "cuda") is None
    assert "variant" in MM.invalid_reason((4096, 151700, 3584, 1), pers, "bf16", "cuda")
    # stream-K stores C in two halves: the 128x256 tile fits with 4 stages (aot_sm90/streamk_halves:
    # 180248 B at 3 stages, as the estimate's 180224 and the barriers)
    assert MM.invalid_reason((512, 4608, 3584, 1), pers | {"variant": "streamk"}, "bf16", "cuda") is None
    sk = pers | {"variant": "streamk", "BLOCK_N": 128}
    assert MM.invalid_reason((512, 4608, 3584, 1), sk, "bf16", "cuda") is None
    assert "programs per SM" in MM.invalid_reason((512, 4608, 3584, 1), sk | {"OCCUPANCY": 2}, "bf16", "cuda")
    assert "warpgroups" in MM.invalid_reason((512, 4608, 3584, 1), sk | {"num_warps": 2}, "bf16", "cuda")
    assert "variant" in MM.invalid_reason((512, 151700, 3584, 1), sk, "bf16", "cuda")  # no TMA, no stream-K


def test_space_is_a_superset_of_flaggems_hopper_list():
    space = MM.space((2048, 4608, 3584, 1), "bf16", "cuda")
    assert space["variant"] == ("fg_tma", "splitk", "persistent", "streamk")
    assert {32, 64, 128, 256} <= set(space["BLOCK_M"]) and {32, 64, 128} <= set(space["BLOCK_N"])
    assert {32, 64, 128} <= set(space["BLOCK_K"]) and {2, 3, 4} <= set(space["num_stages"])
    assert {4, 8} <= set(space["num_warps"])
    # lm_head's N = 151700 rows are not 16-byte multiples: no TMA, no persistent variant
    general = MM.space((64, 151700, 3584, 1), "bf16", "cuda")
    assert general["variant"] == ("fg_general", "splitk") and "OCCUPANCY" not in general
    assert "OCCUPANCY" not in MM.space((8, 64, 64, 1), "fp16", "cpu")  # the CPU searches split-K only


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


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.float32, 1e-5)])
@pytest.mark.parametrize("M,N,K,bt", [(1, 96, 200, True), (5, 64, 128, False), (33, 80, 96, True), (70, 48, 40, False)])
@pytest.mark.parametrize("knobs", [dict(GROUP_M=2), dict(GROUP_M=1, FLATTEN=1, EPILOGUE_SUBTILE=1, WARP_SPECIALIZE=1)])
def test_persistent_mm_matches_torch(dtype, tol, M, N, K, bt, knobs):
    """Several tiles per program (3 programs under the interpreter), partial edge tiles in M, N
    and K (TMA pads loads with zeros and clips stores), both weight layouts, with and without bias."""
    g = torch.Generator().manual_seed(M * N + K)
    a = torch.randn(M, K, generator=g).to(dtype)
    b = (torch.randn(N, K, generator=g).t() if bt else torch.randn(K, N, generator=g)).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype)
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2, **knobs)
    for with_bias in (False, True):
        out = torch.full((M, N), float("nan"), dtype=dtype)
        persistent_mm(a, b, config, out=out, bias=bias if with_bias else None)
        ref = a.double() @ b.double() + (bias.double() if with_bias else 0)
        assert not out.isnan().any()
        assert ((out.double() - ref).norm() / ref.norm()).item() < tol


def test_persistent_mm_refuses_what_tma_cannot_read():
    a, w = torch.randn(8, 64, dtype=torch.float16), torch.randn(32, 64, dtype=torch.float16)
    assert unsupported(a, w.t()) is None and unsupported(a, w.t().contiguous()) is None
    assert "aligned" in unsupported(torch.randn(8, 60, dtype=torch.float16), torch.randn(60, 32, dtype=torch.float16))
    assert "contiguous rows" in unsupported(a.t().contiguous().t(), w.t())
    assert "bias" in unsupported(a, w.t(), bias=torch.randn(31, dtype=torch.float16))
    with pytest.raises(ValueError, match="persistent_mm"):
        persistent_mm(a[:, 1:], torch.randn(63, 32, dtype=torch.float16), {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32})


def test_warm_starts_include_splitk_at_decode_and_streamk_at_prefill():
    for key, variants in [((1, 3584, 18944, 1), {"persistent", "splitk", "streamk"}),
                          ((32, 4608, 3584, 1), {"persistent", "splitk", "streamk"}),  # M=32: 32-row tiles
                          ((128, 3584, 3584, 1), {"persistent"}),
                          ((4096, 3584, 3584, 1), {"persistent", "streamk"}),
                          ((16, 151700, 3584, 1), {"splitk"})]:  # lm_head's rows: no TMA
        starts = MM.starting_configs(key, "bf16", "cuda")
        space = MM.space(key, "bf16", "cuda")
        assert {c["variant"] for c in starts} == variants, key
        for c in starts:
            assert MM.invalid_reason(key, c, "bf16", "cuda") is None and MM.canonical(key, c) == c
            assert set(c) <= set(space), c
        # each split-K start with its reduction in a second kernel and in the same launch
        split = [c for c in starts if c["variant"] == "splitk"]
        assert len(split) % 2 == 0 and {c["FUSED_REDUCE"] for c in split} == ({0, 1} if split else set())


@pytest.mark.parametrize("op,config,key", [
    ("mm", dict(variant="persistent", BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, SPLIT_K=1, num_warps=8,
                num_stages=4), (4096, 3584, 3584, 1)),
    ("addmm", dict(variant="persistent", BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_M=8, num_warps=8,
                   num_stages=4), (4096, 4608, 3584, 1)),
    ("mm", dict(variant="streamk", BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, SPLIT_K=1, num_warps=8,
                num_stages=4), (512, 3584, 3584, 1)),
])
def test_a_winner_stored_before_the_knobs_still_warm_starts(op, config, key):
    """A persistent or stream-K record without the knobs added since (OCCUPANCY, WARP_SPECIALIZE,
    FLATTEN, EPILOGUE_SUBTILE, FUSED_REDUCE), projected onto today's space, runs them at their pinned
    values; before, they came out None and the warm start was dropped as outside the space."""
    import optuna

    from tuner.tuning.candidates import Candidates

    study = optuna.create_study()
    cands = Candidates(study, get_kernel(op), key, "bf16", "cuda", 9)
    projected = cands.project(config)
    assert None not in projected.values() and projected["OCCUPANCY"] == 1 and projected["FLATTEN"] == 0
    cands.enqueue_warm([config])
    (queued,) = study.get_trials(deepcopy=False)
    assert queued.system_attrs["fixed_params"]["variant"] == config["variant"]
