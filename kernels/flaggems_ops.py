"""Shared by the kernel modules that run one of FlagGems' LibTuner kernels with an explicit config
(addmm, bmm): loading the op module, reaching its LibTuner, and the tile limits of a plain tiled
GEMM. Nothing here imports flag_gems at module import time (it cannot import without a GPU)."""

from __future__ import annotations

from kernels.base import Key, next_pow2


def op_module(name: str):
    """FlagGems' `flag_gems.ops.<name>` as loaded (importing it imports flag_gems first): its
    LibTuner / autotuner caches live in that module object, so it is the one to read and seed."""
    import importlib

    return importlib.import_module(f"flag_gems.ops.{name}")


def libtuner(entry):
    """The LibTuner under a LibEntry (the object holding configs, cache and best_config)."""
    while not hasattr(entry, "get_key"):
        entry = entry.fn
    return entry


def last_pick(entry):
    """The config FlagGems' LibTuner used for its last call (the untuned baseline has just run
    the key, and LibTuner.run leaves that config in `best_config`), or None."""
    return getattr(libtuner(entry), "best_config", None)


def tile_invalid_reason(key_mnk: Key, tile: tuple[int, int, int], warps: int, stages: int,
                        fg_max: tuple[int, int, int], names: tuple[str, str, str],
                        dtype: str, device: str, arch: int) -> str | None:
    """Why a (BM, BN, BK) tile of a plain K-loop GEMM cannot run on (M, N, K), or None.

    A block may exceed the padded dimension only up to FlagGems' own largest block (`fg_max`),
    so its untuned pick stays reachable on small keys; shared memory and registers are judged as
    mm's split-K kernel at SPLIT_K=1 on a key padded to the tile, the same K loop.
    """
    from kernels.mm import MM

    M, N, K = key_mnk
    for dim, size, block, cap, name in zip("MNK", (M, N, K), tile, fg_max, names):
        if block > max(cap, next_pow2(size)):
            return f"{name}={block} exceeds the padded {dim} ({next_pow2(size)})"
    bm, bn, bk = tile
    cfg = {"variant": "splitk", "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 1,
           "SPLIT_K": 1, "num_warps": warps, "num_stages": stages}
    return MM().invalid_reason((max(M, bm), max(N, bn), max(K, bk), 1), cfg, dtype, device, arch)
