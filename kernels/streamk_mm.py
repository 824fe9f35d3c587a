"""The project's stream-K GEMM for Hopper: the persistent TMA GEMM's loads, with the K iterations of
the last waves split evenly over the resident programs.

Why: a persistent GEMM whose output tiles do not fill whole waves leaves SMs idle. On the H200
(132 SMs) the qkv projection at M=512 has 4 x 36 = 144 tiles of 128 x 128: one full wave and 12
tiles in a second, so the persistent kernel took 41.6 us against cuBLAS's 24.8 (1.68x), and
Whisper's GEMMs at M=1500 lost 1.17-1.46x the same way (results/gemm_h200). Stream-K (Osama et
al., 2023) gives every program the same number of K iterations: a tile may be started by one
program and finished by the next.

How: full waves but the last run data-parallel (one whole tile per program, as the persistent
kernel does); the tiles left (between one and two waves) are cut into their K iterations, and
program p takes iterations [start(p), start(p + 1)). A program whose range ends mid-tile computes
that piece first of all, writes its fp32 partial to its slot of a workspace and raises its flag;
then it runs its data-parallel tiles, then the pieces of its range that end at a tile's end: it
finishes those tiles, waiting for the flags of the programs before it that worked on the tile,
adding their partials nearest first (a fixed order: the result is the same bit for bit on every
run), lowering the flags again (they start at zero for the next call) and writing the tile with
the bias. A program only ever waits for programs of lower index, which the GPU dispatches first
and which post their partial before anything else, so the waits cannot deadlock even when not
every program is resident, and a finisher waits at most for one piece of each program before it
(not, as when the partial came last, for a chain through every program before it); under
TRITON_INTERPRET=1 programs run in index order and the flags are already up when read.

The flags live in one zeroed buffer per device reused by every call (self-cleaning), so two
calls must not run at once on two streams of one device (vLLM runs its GEMMs on one stream).

Session 10 (compiled for sm_90 by Triton 3.6 on the CPU host, results/aot_sm90/streamk_halves.jsonl):
the partials are written, read and added in two column halves, as the C tile is stored. A whole
fp32 partial loaded beside the accumulator doubled the registers of the persistent kernel's tile
(128x128 over 8 warps 90 -> 178 a thread; 128x256 over 8 and 128x128 over 4 at 255 with 72-88 B of
stack: spills); in halves 128, 206 and 185, none spills. Two knobs beside OCCUPANCY: HOST_DESC
(descriptors built on the host and passed by value, as kernels/persistent_host_mm.py: 1.7-2.1 us a
launch on the H200) and SK_TAIL_ONLY (1: every whole wave runs data-parallel and only the tiles of
the partial wave are split; 0: the last whole wave is split with them, Osama et al.'s default).
Why the second: on the H200 stream-K with no data-parallel tiles took 1.9-2.0x its iterations'
share of the persistent kernel's time (qkv M=512: 42.8 us at 128x256 against 41.5 for the
persistent kernel's one tile per program, results/gemm_h200/session9 gemm.db), unexplained.

Session 11 (H200, results/gemm_h200/session11 wave_probe): the data-parallel code runs as fast as
the persistent kernel's (132 tiles of 128x128: 28.0 vs 27.6 us); the split tiles cost the rest.
12 tiles split over 132 programs took 26.5 us for 6 iterations: each finisher added ~10 partials
one after another, each behind its own spin on a flag (~2.4 us apiece). Now a finisher polls all
its predecessors' flags at once (FLAG_BLOCK atomics a round trip) before adding their partials in
the same order (the same bits; compiled for sm_90, results/aot_sm90/streamk_fixup.jsonl: 92 of 92
configs without spills, 128x128/8 warps 128 -> 102 registers). And SK_SPLIT: the tail's tiles are
cut into SK_SPLIT aligned pieces (every whole wave data-parallel, as SK_TAIL_ONLY), so a finisher
adds SK_SPLIT - 1 partials, not ~programs / tail tiles.

Session 12 (H200, results/gemm_h200/session12): polling the flags at once changed nothing measurable
(144 tiles over every program 52.45 us, 52.4 before); SK_SPLIT did: 144 tiles of 128x128 41.0 us at
4 pieces (persistent 46.8, cuBLAS 24.1), 64 tiles 20.3 at 2 (25.7, 13.7), 12 tiles 15.6 at 4 (24.0,
8.5), so it is a dimension of the search. What remains is ~4 us a split tile plus ~1.2 us a partial
added (12 tiles in 4 pieces of 14 iterations: 15.6 us against 6.4 for the iterations).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.direct_launch import DirectLaunch, cdiv
from kernels.persistent_host_mm import host_reason, operand_descriptors
from kernels.persistent_mm import _scratch, _tile_coords, b_layout, sm_count_of, unsupported, Unsupported


@triton.jit
def _mac(a_desc, b_desc, offs_m, offs_n, k_begin, k_end,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, B_NK: tl.constexpr,
         IEEE: tl.constexpr):
    """The fp32 sum over K tiles [k_begin, k_end) of one output tile."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ki in range(k_begin, k_end):
        offs_k = ki * BLOCK_K
        a = a_desc.load([offs_m, offs_k])
        if B_NK:
            b = b_desc.load([offs_n, offs_k]).T
        else:
            b = b_desc.load([offs_k, offs_n])
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _with_bias(BIAS, acc, offs_n, N, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        rn = offs_n + tl.arange(0, BLOCK_N)
        acc += tl.load(BIAS + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _halves(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The left and right column halves of a tile (register moves, no copy)."""
    return tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))


@triton.jit
def _half_slots(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Offsets of one half's elements in a partial's slot (built where used: kept live across the
    kernel they took a register per element)."""
    return tl.arange(0, BLOCK_M)[:, None] * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)[None, :]


@triton.jit
def _store_halves(c_desc, h0, h1, offs_m, offs_n, BLOCK_N: tl.constexpr):
    dtype = c_desc.dtype
    c_desc.store([offs_m, offs_n], h0.to(dtype))
    c_desc.store([offs_m, offs_n + BLOCK_N // 2], h1.to(dtype))


FLAG_BLOCK = tl.constexpr(32)  # predecessors' flags polled at once (a tile split over more takes more rounds)


@triton.jit
def streamk_mm_kernel(
    A, B, C, BIAS, WS, FLAGS,
    M, N, K,
    stride_am, stride_b, stride_cm,
    NUM_PROGRAMS, DP_TILES, SK_PROGRAMS,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    B_NK: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, HOST_DESC: tl.constexpr,
):
    """A, B, C: pointers, or with HOST_DESC the host's descriptors (C's block is half a tile wide)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n

    if HOST_DESC:
        a_desc = A
        b_desc = B
        c_desc = C
    else:
        a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
        if B_NK:
            b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[stride_b, 1],
                                               block_shape=[BLOCK_N, BLOCK_K])
        else:
            b_desc = tl.make_tensor_descriptor(B, shape=[K, N], strides=[stride_b, 1],
                                               block_shape=[BLOCK_K, BLOCK_N])
        c_desc = tl.make_tensor_descriptor(C, shape=[M, N], strides=[stride_cm, 1],
                                           block_shape=[BLOCK_M, BLOCK_N // 2])

    # the last waves' K iterations, shared evenly by the first SK_PROGRAMS programs (all of them, or
    # SK_SPLIT per tile of the tail): program p takes [first + p*per + min(p, extra), ...)
    first = DP_TILES * k_tiles
    sk_iters = num_tiles * k_tiles - first
    per = sk_iters // SK_PROGRAMS
    extra = sk_iters % SK_PROGRAMS
    q = tl.minimum(pid, SK_PROGRAMS)  # programs past SK_PROGRAMS: an empty range at the end
    start = first + q * per + tl.minimum(q, extra)
    end = tl.where(pid < SK_PROGRAMS, start + per + (pid < extra).to(tl.int32), start)
    half_elems = BLOCK_M * (BLOCK_N // 2)

    # First, before any other work, the piece that ends mid-tile (the end of this program's range):
    # its fp32 partial for the tile's finisher, a later program. Done last, as the first version of
    # this kernel did, every finisher waited for the whole range of the program before it, which
    # waited for the one before: a chain through all programs, 5-22x cuBLAS's time on the H200
    # (e.g. 246.7 us vs 21.3 for fg_tma at M=512 3584x3584; results/gemm_h200/session5).
    stop = end
    if (end > start) & (end % k_tiles != 0):
        tile_id = (end - 1) // k_tiles
        stop = tl.maximum(start, tile_id * k_tiles)
        pid_m, pid_n = _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
        acc = _mac(a_desc, b_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, stop - tile_id * k_tiles,
                   end - tile_id * k_tiles, BLOCK_M, BLOCK_N, BLOCK_K, B_NK, IEEE)
        h0, h1 = _halves(acc, BLOCK_M, BLOCK_N)
        slot = WS + pid.to(tl.int64) * 2 * half_elems
        tl.store(slot + _half_slots(BLOCK_M, BLOCK_N), h0)
        tl.store(slot + half_elems + _half_slots(BLOCK_M, BLOCK_N), h1)
        tl.atomic_xchg(FLAGS + pid, 1, sem="release")

    # whole waves but the last: one tile per program, as the persistent kernel
    for tile_id in range(pid, DP_TILES, NUM_PROGRAMS):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
        acc = _mac(a_desc, b_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, 0, k_tiles,
                   BLOCK_M, BLOCK_N, BLOCK_K, B_NK, IEEE)
        acc = _with_bias(BIAS, acc, pid_n * BLOCK_N, N, BLOCK_N, HAS_BIAS)
        h0, h1 = _halves(acc, BLOCK_M, BLOCK_N)
        _store_halves(c_desc, h0, h1, pid_m * BLOCK_M, pid_n * BLOCK_N, BLOCK_N)

    # then the pieces of [start, stop), each ending at its tile's end: this program finishes those
    # tiles, adding the partials of the programs before it that worked on them, nearest first (a
    # fixed order: the same result bit for bit on every run). Those programs posted them first thing.
    it = start
    while it < stop:
        tile_id = it // k_tiles
        k_begin = it % k_tiles
        pid_m, pid_n = _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
        acc = _mac(a_desc, b_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, k_begin, k_tiles,
                   BLOCK_M, BLOCK_N, BLOCK_K, B_NK, IEEE)
        acc = _with_bias(BIAS, acc, pid_n * BLOCK_N, N, BLOCK_N, HAS_BIAS)
        h0, h1 = _halves(acc, BLOCK_M, BLOCK_N)
        # the programs before this one that worked on the tile: from the one whose range holds its
        # first iteration (the inverse of `start`) to pid - 1. Their flags are polled together, a
        # vector of atomics a round trip (one by one, each partial cost ~2.4 us on the H200 with 12
        # tiles split 11 ways: results/gemm_h200/session11 wave_probe), then the partials are added
        # nearest first, the same order as before: the same bits.
        x = tile_id * k_tiles - first
        owner = tl.where(x < extra * (per + 1), x // (per + 1),
                         extra + (x - extra * (per + 1)) // tl.maximum(per, 1))
        for base in range(owner, pid, FLAG_BLOCK):
            offs = base + tl.arange(0, FLAG_BLOCK)
            waiting = offs < pid
            while tl.min(tl.where(waiting, tl.atomic_add(FLAGS + offs, 0, mask=waiting, sem="acquire"), 1)) == 0:
                pass
        p = pid - 1
        while p >= owner:  # a while loop: a for loop's hoisted slot offsets took 50-90 more registers
            # .cg: read from L2, where the release made the partial visible (not a stale L1 line)
            slot = WS + p.to(tl.int64) * 2 * half_elems
            h0 += tl.load(slot + _half_slots(BLOCK_M, BLOCK_N), cache_modifier=".cg")
            h1 += tl.load(slot + half_elems + _half_slots(BLOCK_M, BLOCK_N), cache_modifier=".cg")
            p -= 1
        for base in range(owner, pid, FLAG_BLOCK):
            offs = base + tl.arange(0, FLAG_BLOCK)
            tl.atomic_xchg(FLAGS + offs, 0, mask=offs < pid, sem="relaxed")
        _store_halves(c_desc, h0, h1, pid_m * BLOCK_M, pid_n * BLOCK_N, BLOCK_N)
        it += k_tiles - k_begin


# the timings' identity (jit_source_hash)
KERNEL_FUNCTIONS = (streamk_mm_kernel, _mac, _with_bias, _halves, _half_slots, _store_halves, _tile_coords)


def dp_tiles(tiles: int, programs: int, tail_only: bool = False) -> int:
    """Tiles run data-parallel: every whole wave but the last (with `tail_only`, every whole
    wave); all of them when the waves are whole (stream-K would only add the partials' traffic),
    none when there is less than one."""
    waves, rest = divmod(tiles, programs)
    if rest == 0:
        return tiles
    return (waves if tail_only else max(0, waves - 1)) * programs


def sk_programs(tiles: int, dp: int, programs: int, split: int = 0) -> int:
    """Programs sharing the stream-K tiles' iterations: every program (split 0, Osama et al.'s
    default), or `split` a tile (each tile cut into that many aligned pieces: fewer partials a
    finisher adds than with the tail's few tiles spread over every program)."""
    if split <= 0:
        return programs
    return max(1, min(programs, (tiles - dp) * split))


def programs_for(M: int, N: int, config: dict, sm_count: int) -> int:
    """Resident programs: OCCUPANCY per SM (every program takes a share of the K iterations, so
    fewer tiles than SMs still use every SM)."""
    return max(1, sm_count * config.get("OCCUPANCY", 1))


@functools.lru_cache(maxsize=None)
def _flags(device: torch.device, programs: int) -> torch.Tensor:
    """One zeroed flag per program, reused by every call (the finishers lower them again)."""
    return torch.zeros(programs, dtype=torch.int32, device=device)


def _launch_kwargs(config: dict, b_nk: bool, has_bias: bool, ieee: bool) -> dict:
    return dict(
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
        GROUP_M=config.get("GROUP_M", 8), B_NK=b_nk, HAS_BIAS=has_bias, IEEE=ieee,
        HOST_DESC=bool(config.get("HOST_DESC", 0)),
        num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3),
    )


def _host_descriptors(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, b_nk: bool, config: dict) -> tuple:
    """A's, B's (persistent_host_mm's) and C's descriptors, C's block half a tile wide as the kernel
    stores it."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return (*operand_descriptors(a, b, b_nk, config),
            TensorDescriptor.from_tensor(c, [config["BLOCK_M"], config["BLOCK_N"] // 2]))


streamk_mm_direct = DirectLaunch(streamk_mm_kernel)  # later launches skip Triton's dispatch


def streamk_mm(a: torch.Tensor, b: torch.Tensor, config: dict, out: torch.Tensor | None = None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """C = A @ B (+ bias) with `config` (BLOCK_M/N/K, GROUP_M, OCCUPANCY, HOST_DESC, SK_TAIL_ONLY,
    SK_SPLIT (sk_programs; it implies SK_TAIL_ONLY), num_warps, num_stages). Raises Unsupported for
    tensors TMA cannot take as they are (as persistent_mm)."""
    M, K = a.shape
    N = b.shape[1]
    c = out if out is not None else torch.empty((M, N), dtype=a.dtype, device=a.device)
    reason = host_reason(a, b, c, bias) if config.get("HOST_DESC") else unsupported(a, b, c, bias)
    if reason:
        raise Unsupported(f"streamk_mm {tuple(a.shape)} @ {tuple(b.shape)}: {reason}")
    b_nk, stride_b = b_layout(b)
    programs = programs_for(M, N, config, sm_count_of(a.device))
    tiles = cdiv(M, config["BLOCK_M"]) * cdiv(N, config["BLOCK_N"])
    ws = torch.empty((programs, config["BLOCK_M"] * config["BLOCK_N"]), dtype=torch.float32, device=a.device)
    operands = _host_descriptors(a, b, c, b_nk, config) if config.get("HOST_DESC") else (a, b, c)
    split = config.get("SK_SPLIT", 0)
    dp = dp_tiles(tiles, programs, bool(config.get("SK_TAIL_ONLY", 0) or split))
    triton.set_allocator(_scratch)
    streamk_mm_direct[(programs,)](
        *operands, bias if bias is not None else c, ws, _flags(a.device, programs), M, N, K,
        a.stride(0), stride_b, c.stride(0), programs, dp, sk_programs(tiles, dp, programs, split),
        **_launch_kwargs(config, b_nk, bias is not None, a.dtype == torch.float32),
    )
    return c
