"""Tunable GEMM: FlagGems' Hopper mm kernels and the project's own split-K Triton GEMM.

Key (M, N, K, BT): C[M,N] = A[M,K] @ B[K,N]; BT=1 means B is the transpose of an N x K weight,
as nn.Linear stores it and as vLLM / FlagGems meet it when serving (BT=0: B stored K x N).

Variants (a search dimension):
- fg_tma: FlagGems 5.x `mm_kernel_general_host_tma` (its path for fp16/bf16 with N, K % 8 == 0)
- fg_general: FlagGems `mm_kernel_general` (its path for every other shape)
- splitk: kernels/triton_mm.py (runs under TRITON_INTERPRET=1 too); its own parameter
  FUSED_REDUCE: 0 sums the splits' partials in a second kernel, 1 in the same launch
  (kernels/splitk_fused.py: the same result bit for bit, one launch fewer)
- persistent: kernels/persistent_mm.py, tuner's persistent TMA GEMM (GPU search only: it runs
  under the interpreter, but interpreter timings say nothing about TMA; its own parameters are
  OCCUPANCY, WARP_SPECIALIZE, FLATTEN and EPILOGUE_SUBTILE, pinned for the other variants)
- streamk: kernels/streamk_mm.py, the persistent GEMM's loads with the last waves' K iterations
  shared evenly by the programs (for tiles that do not fill whole waves: M=512, M=1500); GPU
  search only, its own parameter OCCUPANCY
Only the FlagGems kernel that FlagGems itself would pick for a key is searched, because only
that one can be injected into its LibTuner cache for that key.
"""

from __future__ import annotations

import math
from typing import Mapping

from kernels.base import (Config, Coverage, Inputs, Kernel, KernelInputError, Key, Runner, jit_source_hash, next_pow2,
                          torch_dtype)
from kernels.flaggems_ops import jit_function
from tuner.devices import ELEM_BYTES, TORCH_NAMES

# per-block opt-in shared memory by compute capability major (bytes)
SMEM_BY_ARCH = {9: 232448, 8: 166912}
SMEM_DEFAULT = 101376
MAX_WORKSPACE_BYTES = 512 << 20
FUSED_COUNT_SLOTS = 1 << 16  # output tiles a fused split-K call may have (256 KiB of int32 counts per device)
FG_GROUP_M = 8  # FlagGems' general_mm always passes GROUP_M=8: its cache cannot hold another
# the tile and launch dimensions of every GEMM space of tuner's kernels (mm, scaled_mm)
TILE_SPACE = {"BLOCK_M": (16, 32, 64, 128, 256), "BLOCK_N": (32, 64, 128, 256), "BLOCK_K": (32, 64, 128, 256),
              "GROUP_M": (1, 4, 8, 16)}
LAUNCH_SPACE = {"num_warps": (2, 4, 8), "num_stages": (2, 3, 4, 5)}
# HOST_DESC: descriptors built on the host (kernels/persistent_host_mm.py; stream-K's kernel takes
# either); only the bf16/fp16/fp32 2-D kernels have that form (not the batched or the fp8 kernel)
HOST_DESC_KNOB = "HOST_DESC"
# SK_TAIL_ONLY: stream-K splits only the partial wave's tiles (kernels/streamk_mm.py dp_tiles)
SK_TAIL_KNOB = "SK_TAIL_ONLY"
# SK_SPLIT: stream-K cuts each of those tiles into that many aligned pieces (0: over every program;
# implies SK_TAIL_ONLY). H200 (results/gemm_h200/session12 wave_probe): qkv M=512, 144 tiles of
# 128x128: 41.0 us at 4 against 52.4 over every program and 46.8 for the persistent kernel
SK_SPLIT_KNOB = "SK_SPLIT"
# the persistent kernels' own parameters (persistent and stream-K: KNOBS says which takes which),
# and the value they are pinned to for the other variants
PERSISTENT_PARAMS = {"OCCUPANCY": (1, 2), "WARP_SPECIALIZE": (0, 1), "FLATTEN": (0, 1), "EPILOGUE_SUBTILE": (0, 1),
                     HOST_DESC_KNOB: (0, 1), SK_TAIL_KNOB: (0, 1), SK_SPLIT_KNOB: (0, 2, 4)}
PERSISTENT_PINNED = {"OCCUPANCY": 1, "WARP_SPECIALIZE": 0, "FLATTEN": 0, "EPILOGUE_SUBTILE": 0, HOST_DESC_KNOB: 0,
                     SK_TAIL_KNOB: 0, SK_SPLIT_KNOB: 0}
# split-K's parameters, and their value for the other variants (and FUSED_REDUCE's at SPLIT_K=1,
# where there is nothing to reduce)
SPLIT_PARAMS = {"SPLIT_K": (1, 2, 4, 8, 16), "FUSED_REDUCE": (0, 1)}
SPLIT_PINNED = {"SPLIT_K": 1, "FUSED_REDUCE": 0}

# MiniCPM-o 2.6 LLM GEMMs (N, K) from shared/facts/minicpmo-2.6.md, with vLLM's fused qkv/gate_up
MINICPMO_LLM_NK = {
    "qkv": (4608, 3584),
    "o": (3584, 3584),
    "gate_up": (37888, 3584),
    "down": (3584, 18944),
    "lm_head": (151700, 3584),
}
SERVING_M = (1, 16, 64, 256, 2048, 8192)
# the resampler's mm calls for one 1344 x 1344 image (10 slices x 1024 positions, 64 queries), as
# the H200 profiled its forward (results/gemm_h200/session12/resampler): kv_proj over the patches;
# proj (x @ P: a K x N parameter, layout kn) over 10 x 64 queries; and the q and k/v projections
# folded into one mm each where the weights require grad (nn.MultiheadAttention's default, as vLLM
# builds it; without grad they reach bmm: kernels/bmm.py)
RESAMPLER_MM = [(10240, 3584, 1152, 1), (640, 3584, 3584, 0), (640, 3584, 3584, 1), (10240, 3584, 3584, 1)]
# vLLM serving the LLM: gate and up fused, the vocab padded to a multiple of 64 (151744), each GEMM
# split over tensor-parallel ranks (column-parallel qkv/gate_up/lm_head divide N, row-parallel o/down
# divide K); M as vLLM meets them: decode batches in CUDA graphs and prefill chunks
VLLM_NK = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944),
           "lm_head": (151744, 3584)}
VLLM_ROW_PARALLEL = ("o", "down")
VLLM_M = (1, 8, 32, 64, 512, 2048, 4096)


def vllm_shard_keys(tp: int, layers: tuple[str, ...], ms: tuple[int, ...] = VLLM_M) -> list[Key]:
    """The (M, N, K, BT) one rank's GEMMs have when vLLM serves the LLM with tensor parallel `tp`."""
    keys = []
    for layer in layers:
        n, k = VLLM_NK[layer]
        n, k = (n, k // tp) if layer in VLLM_ROW_PARALLEL else (n // tp, k)
        keys += [(m, n, k, 1) for m in ms]
    return keys
OWN_MODULES = {"splitk": "kernels.triton_mm", "persistent": "kernels.persistent_mm",
               "streamk": "kernels.streamk_mm"}  # tuner's kernels by variant
FUSED_SPLITK_MODULE = "kernels.splitk_fused"  # split-K with FUSED_REDUCE=1
PERSISTENT_HOST_MODULE = "kernels.persistent_host_mm"  # persistent with HOST_DESC=1
TMA_VARIANTS = ("persistent", "streamk")  # tuner's kernels that read through TMA descriptors
# the own parameters each variant takes; the others are pinned (PERSISTENT_PINNED) in its configs
KNOBS = {"persistent": tuple(k for k in PERSISTENT_PARAMS if k not in (SK_TAIL_KNOB, SK_SPLIT_KNOB)),
         "streamk": ("OCCUPANCY", HOST_DESC_KNOB, SK_TAIL_KNOB, SK_SPLIT_KNOB), "splitk": tuple(SPLIT_PARAMS)}


def own_module(config: Mapping) -> str | None:
    """The module of tuner's kernel that `config` runs (its KERNEL_FUNCTIONS are the identity of
    the config's timings), or None for FlagGems' kernels. A split-K config stored before
    FUSED_REDUCE existed runs the two-kernel split-K, as it did when it was timed."""
    variant = config.get("variant")
    if variant == "splitk" and config.get("FUSED_REDUCE") and config.get("SPLIT_K", 1) > 1:
        return FUSED_SPLITK_MODULE
    if variant == "persistent" and config.get(HOST_DESC_KNOB):
        return PERSISTENT_HOST_MODULE
    return OWN_MODULES.get(variant)


def flag_gems_mm_module():
    """The module FlagGems' aten::mm dispatches to on this GPU. FlagGems loads its Hopper ops
    under its own module names (`hopper.ops.mm`), so importing the file by its package path
    would create a second copy with its own LibTuner caches: find the loaded one instead."""
    import importlib
    import sys

    importlib.import_module("flag_gems")
    for mod in list(sys.modules.values()):
        entry = getattr(mod, "mm_kernel_general_host_tma", None)
        if entry is not None and type(entry).__name__ == "LibEntry":
            return mod
    return importlib.import_module("flag_gems.runtime.backend._nvidia.hopper.ops.mm")


def tma_rows(key: Key, dtype: str) -> bool:
    """Whether every row stride of the key (A's K, the weight's K or B's N, C's N) is a multiple
    of 16 bytes, as TMA requires (lm_head's N = 151700 in bf16 is not)."""
    M, N, K, _ = key
    per16 = 16 // ELEM_BYTES[dtype]
    return N % per16 == 0 and K % per16 == 0


def persistent_starts(M: int) -> list[Config]:
    """Tile shapes of Hopper's persistent GEMMs (Triton's tutorial 09: 128x256x64, 3 stages, 8 warps;
    the 128x128 wgmma tile), and skinny tiles for decode M: the persistent variant's warm start."""
    if M >= 256:
        return [dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3, EPILOGUE_SUBTILE=1),
                dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
                dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4, FLATTEN=1)]
    bm = 16 if M <= 16 else (32 if M <= 32 else 64)  # never over the padded M: such a start is dropped
    return [dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=256 if bm == 16 else 128, GROUP_M=1, num_warps=4, num_stages=4),
            dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=4),
            dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=64, GROUP_M=1, num_warps=4, num_stages=5, FLATTEN=1)]


def splitk_starts(M: int) -> list[Config]:
    """Split-K tiles that won decode keys on the H200 (results/gemm_h200/gemm.db: o and down at
    M = 1..32 took BLOCK_M 16-32, BLOCK_N 32-64, BLOCK_K 64-128, SPLIT_K 4-8): the split-K
    variant's warm start where few output tiles leave SMs idle (M <= 64); none above. Each with
    the reduction in a second kernel and in the same launch (FUSED_REDUCE), side by side."""
    if M > 64:
        return []
    bm = 16 if M <= 16 else 32
    tiles = [dict(variant="splitk", BLOCK_M=bm, BLOCK_N=64, BLOCK_K=128, GROUP_M=1, SPLIT_K=8, num_warps=4, num_stages=3),
             dict(variant="splitk", BLOCK_M=bm, BLOCK_N=64, BLOCK_K=64, GROUP_M=1, SPLIT_K=8, num_warps=8, num_stages=3),
             dict(variant="splitk", BLOCK_M=bm, BLOCK_N=32, BLOCK_K=128, GROUP_M=1, SPLIT_K=4, num_warps=2, num_stages=3)]
    return [c | {"FUSED_REDUCE": fused} for c in tiles for fused in (0, 1)]


def streamk_starts(M: int) -> list[Config]:
    """The stream-K variant's warm start. Prefill M whose tiles leave a partial wave (M=512,
    M=1500 on the H200): Hopper's 128-row wgmma tiles. Decode M (<= 64): skinny tiles, where
    stream-K is a split-K in one kernel (the partials added by the finisher, no reduce kernel:
    split-K's second launch is ~2 us of a 10-13 us decode GEMM in a CUDA graph). On the H200
    (results/gemm_h200/session7, kernels as before session 10's halves) it won lm_head at M=4096
    and lost the partial-wave keys it was written for (qkv M=512: 1.04x the persistent kernel)."""
    if M < 256:
        if M > 64:
            return []
        bm = 16 if M <= 16 else (32 if M <= 32 else 64)
        return [dict(variant="streamk", BLOCK_M=bm, BLOCK_N=64, BLOCK_K=128, GROUP_M=1, OCCUPANCY=1, num_warps=4,
                     num_stages=4),
                dict(variant="streamk", BLOCK_M=bm, BLOCK_N=32, BLOCK_K=128, GROUP_M=1, OCCUPANCY=2, num_warps=4,
                     num_stages=4)]
    # and the first with only the partial wave's tiles split (SK_TAIL_ONLY): with no data-parallel
    # tiles stream-K took 1.9-2.0x its share of the persistent kernel's time (H200, session 9); and
    # those cut in 2 or 4 pieces (SK_SPLIT): 0.88x the persistent kernel's time at 144 tiles, 0.79x
    # at 64 (split 2), 0.65x at 12 (split 4) (H200, results/gemm_h200/session12/wave_probe.jsonl)
    square = dict(variant="streamk", BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4)
    return [square, square | {SK_TAIL_KNOB: 1}, square | {SK_TAIL_KNOB: 1, SK_SPLIT_KNOB: 2},
            square | {SK_TAIL_KNOB: 1, SK_SPLIT_KNOB: 4}, square | dict(BLOCK_N=256, num_stages=3),
            square | dict(num_warps=4)]


def mm_starts(space: Mapping[str, tuple], M: int) -> list[Config]:
    """Warm starts of every own variant that `space` (mm's, or an op's own variants) holds, in
    mm's names with the knobs the space has pinned: persistent, stream-K, split-K."""
    variants = space["variant"]
    # each persistent start on device- and host-built descriptors (H200: host 0.82-0.99x the time)
    host = [{HOST_DESC_KNOB: 0}, {HOST_DESC_KNOB: 1}] if HOST_DESC_KNOB in space else [{}]
    starts = [{"variant": "persistent", **c, **h} for c in persistent_starts(M) for h in host] \
        if "persistent" in variants else []
    starts += streamk_starts(M) if "streamk" in variants else []
    starts += splitk_starts(M) if "splitk" in variants else []
    pinned = {k: v for k, v in {**PERSISTENT_PINNED, **SPLIT_PINNED}.items() if k in space}
    return [pinned | {k: v for k, v in c.items() if k in space or k not in SPLIT_PINNED} for c in starts]


def held_knobs(space: Mapping[str, tuple], variant: str, fg_group_m: int | None = None) -> dict[str, tuple]:
    """`space` with only `variant`, the own knobs that variant does not take (KNOBS) held at their
    pinned value, and GROUP_M at `fg_group_m` for a FlagGems variant (fg_*) when given."""
    takes = KNOBS.get(variant, ())
    part = dict(space, variant=(variant,))
    part |= {k: (v,) for k, v in {**PERSISTENT_PINNED, **SPLIT_PINNED}.items() if k in part and k not in takes}
    if variant.startswith("fg_") and fg_group_m is not None and "GROUP_M" in part:
        part["GROUP_M"] = (fg_group_m,)
    return part


def persistent_reason(config: Config, smem: int, limit: int, arch: int) -> str | None:
    """Why a persistent TMA kernel's config (bf16 or fp8) cannot run, its shared memory per
    program `smem` already within `limit`: resident programs, warpgroups, warp specialisation."""
    if config["OCCUPANCY"] > 1 and config["OCCUPANCY"] * smem > limit:
        return f"{config['OCCUPANCY']} programs per SM need {config['OCCUPANCY'] * smem} B of shared memory"
    if config["num_warps"] < 4:
        return "the persistent kernel's wgmma main loop works on whole warpgroups (4 warps)"
    if arch == 9 and config.get("WARP_SPECIALIZE"):
        if config.get("FLATTEN"):
            # H200, Triton 3.6 (results/gemm_h200/session5/ws_probe.jsonl): with FLATTEN the loop is
            # not split into warp groups (4 warps, no setmaxnreg): the kernel FLATTEN alone makes
            return "WARP_SPECIALIZE with FLATTEN compiles to the FLATTEN kernel on sm_90 (no warp groups)"
        # Triton 3.6 compiling for sm_90 (results/aot_sm90): with 8 warps the cubin is the one without
        # WARP_SPECIALIZE (80 of 80 pairs, bf16 and fp8); its warp-specialisation pass fails with the
        # subtiled epilogue and 128- or 256-row tiles (49 of 49) and on 64x256 tiles (13 of 13)
        if config["num_warps"] == 8:
            return "WARP_SPECIALIZE with 8 warps compiles to the same binary as without it on sm_90"
        if config.get("EPILOGUE_SUBTILE") and config["BLOCK_M"] >= 128:
            return "WARP_SPECIALIZE with EPILOGUE_SUBTILE at BLOCK_M >= 128 does not compile on sm_90 (Triton 3.6)"
        if config["BLOCK_M"] == 64 and config["BLOCK_N"] == 256:
            return "WARP_SPECIALIZE on a 64x256 tile does not compile on sm_90 (Triton 3.6)"
        # results/aot_sm90/host_desc_ws.jsonl: 0 of 12 tiles of 128 or 256 rows compile on host-built
        # descriptors ('tt.descriptor_store' block and tensor types must match: the pass splits C's
        # tile per consumer warp group and cannot re-type a descriptor argument); 8 of 8 at 64 rows
        if config.get("HOST_DESC") and config["BLOCK_M"] >= 128:
            return "WARP_SPECIALIZE on host-built descriptors at BLOCK_M >= 128 does not compile on sm_90 (Triton 3.6)"
    # an fp32 accumulator of 256 registers per thread spills (results/aot_sm90: 21 of 21 such 4-warp
    # configs at 255 registers with 512-1160 B of stack, persistent, fp8 and stream-K); warp
    # specialisation splits it over consumer warp groups (256x128, 4 warps: 168 registers, no stack).
    # fp8's PRECISE_ACC keeps a second one beside the wgmma's (aot_sm90/fp8_precise_acc: 128x128 over
    # 4 warps 154 -> 254 registers, 128x256 over 8 warps 159 -> 255 and 56 B of stack)
    bm, bn, warps = config["BLOCK_M"], config["BLOCK_N"], config["num_warps"]
    warp_groups = arch == 9 and config.get("WARP_SPECIALIZE") and bm >= 64
    copies = 2 if config.get("PRECISE_ACC") else 1
    if copies * bm * bn >= 256 * 32 * warps and not warp_groups:
        if copies > 1:
            return f"PRECISE_ACC doubles a {bm}x{bn} accumulator over {warps} warps: it spills"
        return f"a {bm}x{bn} fp32 accumulator over {warps} warps spills"
    return None


def reference_product(a, b):
    """A @ B for the correctness check: fp32 without TF32 on the GPU (far below the bf16/fp16
    tolerances), fp64 on the CPU (exact enough, and the interpreter's keys are small)."""
    import torch

    if a.is_cuda:
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return a.float() @ b.float()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    return a.double() @ b.double()


def flaggems_variant(key: Key, dtype: str) -> str:
    """Which Hopper kernel FlagGems 5.x runs for this key (hopper/ops/mm.py general_mm)."""
    return "fg_tma" if tma_rows(key, dtype) else "fg_general"


# the profiled GEMMs whose keys mm tunes (aten::addmm and aten::bmm have ops of their own); not one
# FlagGems op: its winners include the project's split-K GEMM, which takes aten::mm over itself
COVERAGE = Coverage(aten_ops={"aten::mm": "mm", "aten::linear": "linear", "aten::matmul": "matmul",
                              "aten::baddbmm": "baddbmm", "aten::_addmm_activation": "addmm"},
                    profile_keys=True, injectors=("mm_flaggems", "gemm_routes"))


class MM(Kernel):
    name = "mm"
    description = "GEMM C = A @ B (aten::mm): FlagGems Hopper kernels + own split-K Triton GEMM"
    key_names = ("M", "N", "K", "BT")
    key_help = {"M": "rows of A: tokens in the batch", "N": "output features (rows of the N x K weight)",
                "K": "input features (the inner dimension)",
                "BT": "1: B is an N x K weight transposed, as nn.Linear and vLLM use it (--shape M,N,K or "
                      "M,N,K,nk); 0: B stored K x N (--shape M,N,K,kn)"}
    source_modules = ("kernels.triton_mm", "kernels.splitk_fused", "kernels.persistent_mm",
                      "kernels.persistent_host_mm", "kernels.streamk_mm",
                      "flag_gems.runtime.backend._nvidia.hopper.ops.mm")

    # ---- keys -------------------------------------------------------------------------
    def parse_key(self, text: str) -> Key:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        bt = 1
        if len(parts) == 4:
            # BT as the tables print it (1 / 0) or by name: a key copied from `db show` parses
            layout = {"1": "nk", "0": "kn"}.get(parts[-1], parts[-1].lower())
            parts.pop()
            if layout not in ("nk", "kn"):
                raise KernelInputError(
                    f"shape {text!r}: the 4th field is the weight layout, 'nk' or 1 (nn.Linear, default) "
                    "or 'kn' or 0"
                )
            bt = int(layout == "nk")
        if len(parts) != 3:
            raise KernelInputError(f"shape {text!r} for op mm must be M,N,K (optionally M,N,K,nk|kn)")
        try:
            M, N, K = (int(p) for p in parts)
        except ValueError:
            raise KernelInputError(f"shape {text!r} must be integers M,N,K") from None
        if min(M, N, K) <= 0:
            raise KernelInputError(f"shape {text!r} must be positive integers")
        return (M, N, K, bt)

    def presets(self) -> Mapping[str, list[Key]]:
        llm = [(m, n, k, 1) for (n, k) in MINICPMO_LLM_NK.values() for m in SERVING_M]
        # qkv carries a bias: in vLLM it is addmm's (kernels/addmm.py has the same presets for it)
        vllm = {f"vllm-tp{tp}": vllm_shard_keys(tp, ("o", "gate_up", "down", "lm_head")) for tp in (1, 2, 4, 8)}
        return {"minicpmo-llm": llm, "minicpmo-resampler": list(RESAMPLER_MM), **vllm}

    def flops(self, key: Key) -> float:
        M, N, K, _ = key
        return 2.0 * M * N * K

    def bytes_per_set(self, key: Key, dtype: str) -> int:
        M, N, K, _ = key
        return (M * K + K * N + M * N) * ELEM_BYTES[dtype]

    # ---- search space -------------------------------------------------------------------
    def space(self, key: Key, dtype: str, device: str) -> dict[str, tuple]:
        if device == "cpu":
            variants: tuple = ("splitk",)
        else:
            variants = (flaggems_variant(key, dtype), "splitk") + (TMA_VARIANTS if tma_rows(key, dtype) else ())
        own = PERSISTENT_PARAMS if "persistent" in variants else {}
        return {"variant": variants, **TILE_SPACE, **SPLIT_PARAMS, **LAUNCH_SPACE, **own}

    def grid_spaces(self, key: Key, dtype: str, device: str) -> list[dict[str, tuple]]:
        """One part per variant, the knobs it does not take (KNOBS) at their pinned value and
        FlagGems' GROUP_M at the one its cache holds: canonical pins them anyway."""
        space = self.space(key, dtype, device)
        return [held_knobs(space, v, FG_GROUP_M) for v in space["variant"]]

    def canonical(self, key: Key, config: Config) -> Config:
        c = dict(config)
        M = key[0]
        # a knob the config lacked (a record stored before the knob existed, projected onto today's
        # space as a warm start: None) ran at its pinned value; None would leave it outside the space
        c.update({k: v for k, v in {**PERSISTENT_PINNED, **SPLIT_PINNED}.items() if k in c and c[k] is None})
        takes = KNOBS.get(c["variant"], ())  # the keys a space without persistent lacks stay absent
        c.update({k: v for k, v in PERSISTENT_PINNED.items() if k in c and k not in takes})
        if c.get(SK_SPLIT_KNOB):
            c[SK_TAIL_KNOB] = 1  # SK_SPLIT splits only the partial wave's tiles (streamk_mm)
        if c["variant"] != "splitk" or c.get("SPLIT_K") == 1:
            c.update({k: v for k, v in SPLIT_PINNED.items() if k in c or k == "SPLIT_K"})
        if c["variant"].startswith("fg_"):
            c["GROUP_M"] = FG_GROUP_M
            return c
        if math.ceil(M / c["BLOCK_M"]) == 1:
            c["GROUP_M"] = 1  # one row of tiles: grouping cannot change the order
        return c

    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        M, N, K, _ = key
        bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
        sk, warps, stages = config["SPLIT_K"], config["num_warps"], config["num_stages"]
        variant = config["variant"]
        if variant not in self.space(key, dtype, device)["variant"]:
            return f"variant {variant} does not serve this key on {device}"
        # FlagGems' own lists start at BLOCK_M=32 (its untuned pick must stay reachable); tuner's
        # kernels go down to 16, the smallest tile tl.dot takes
        if bm > max(64 if variant.startswith("fg_") else 16, next_pow2(M)):
            return f"BLOCK_M={bm} exceeds the padded M ({next_pow2(M)})"
        if bn > max(32, next_pow2(N)):
            return f"BLOCK_N={bn} exceeds the padded N ({next_pow2(N)})"
        k_split = math.ceil(K / sk)
        if bk > max(32, next_pow2(k_split)):
            return f"BLOCK_K={bk} exceeds the K of one split ({k_split})"
        if sk > 1 and k_split < bk:
            return f"SPLIT_K={sk} leaves less than one BLOCK_K of K per split"
        if sk * M * N * 4 > MAX_WORKSPACE_BYTES and sk > 1:
            return f"SPLIT_K={sk} needs a {sk * M * N * 4 >> 20} MiB workspace"
        if own_module(config) == FUSED_SPLITK_MODULE and math.ceil(M / bm) * math.ceil(N / bn) > FUSED_COUNT_SLOTS:
            return f"the fused reduction counts {FUSED_COUNT_SLOTS} output tiles at most"
        eb = ELEM_BYTES[dtype]
        smem = (bm * bk + bk * bn) * eb * stages
        if variant == "fg_tma":
            smem += bm * bn * eb  # the TMA store stages the C tile in shared memory
        if variant in TMA_VARIANTS:  # the TMA store's C tile (halved by the subtiled epilogue; stream-K's always)
            smem += bm * bn * eb // (2 if config.get("EPILOGUE_SUBTILE") or variant == "streamk" else 1)
        limit = SMEM_BY_ARCH.get(arch, SMEM_DEFAULT) if device == "cuda" else SMEM_BY_ARCH[9]
        if smem > limit:
            return f"needs {smem} B of shared memory, the limit is {limit}"
        if variant in TMA_VARIANTS and (why := persistent_reason(config, smem, limit, arch)):
            return why
        if bm * bn > 256 * 32 * warps:
            return f"a {bm}x{bn} fp32 accumulator over {warps} warps needs > 256 registers per thread"
        if warps == 2 and bm * bn > 64 * 64:
            return "2 warps for a tile over 64x64"
        return None

    # ---- running ------------------------------------------------------------------------
    def source_hash(self, config: Config | None = None) -> str:
        """sha256 of the Triton source of the kernel this config runs: FlagGems' JIT function
        for fg_* variants, the Triton functions of tuner's own module (OWN_MODULES) for split-K and
        persistent."""
        import hashlib

        variant = (config or {}).get("variant")
        if variant in OWN_MODULES:
            return jit_source_hash(own_module(config))
        if variant in ("fg_tma", "fg_general"):
            fg = flag_gems_mm_module()
            fn = fg.mm_kernel_general_host_tma if variant == "fg_tma" else fg.mm_kernel_general
            return hashlib.sha256(jit_function(fn).src.encode()).hexdigest()
        return super().source_hash()

    def make_inputs(self, key: Key, dtype: str, device: str, n_sets: int, seed: int) -> Inputs:
        import torch

        M, N, K, bt = key
        dt = torch_dtype(dtype)
        g = torch.Generator(device=device).manual_seed(seed)
        sets, outs = [], []
        for _ in range(n_sets):
            a = torch.randn((M, K), generator=g, device=device, dtype=dt)
            if bt:
                b = torch.randn((N, K), generator=g, device=device, dtype=dt).t()
            else:
                b = torch.randn((K, N), generator=g, device=device, dtype=dt)
            sets.append((a, b))
            outs.append(torch.empty((M, N), device=device, dtype=dt))
        return Inputs(sets=sets, outs=outs)

    def reference(self, args: tuple):
        return reference_product(*args)

    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        variant = config["variant"]
        if variant == "splitk":
            from kernels.triton_mm import splitk_mm

            cfg = dict(config)
            return lambda args, out: splitk_mm(args[0], args[1], cfg, out=out)
        if variant == "persistent":
            from kernels.persistent_mm import persistent_mm

            cfg = dict(config)
            return lambda args, out: persistent_mm(args[0], args[1], cfg, out=out)
        if variant == "streamk":
            from kernels.streamk_mm import streamk_mm

            cfg = dict(config)
            return lambda args, out: streamk_mm(args[0], args[1], cfg, out=out)
        if variant == "fg_tma":
            return _fg_tma_runner(config, dtype)
        if variant == "fg_general":
            return _fg_general_runner(config)
        raise KernelInputError(f"unknown mm variant {variant!r}")

    def precompile(self, key: Key, config: Config, dtype: str, device: str) -> None:
        """Compile without launching (Triton's warmup), so the binary lands in the disk cache
        before the worker times it. Only meaningful on the GPU."""
        if device != "cuda":
            return
        if own_module(config) == FUSED_SPLITK_MODULE:
            from kernels.splitk_fused import fused_splitk_warmup

            fused_splitk_warmup(key, dtype, config)
        elif config["variant"] == "splitk":
            from kernels.triton_mm import splitk_warmup

            splitk_warmup(key, dtype, config)
        elif own_module(config) == OWN_MODULES["persistent"]:
            from kernels.persistent_mm import persistent_warmup

            persistent_warmup(key, dtype, config)
        else:
            # FlagGems' kernels, stream-K and the host-descriptor persistent kernel take descriptors
            # / pointers whose specialisation needs real tensors: compile them by running once on
            # the real shapes
            import torch

            inputs = self.make_inputs(key, dtype, device, 1, seed=0)
            self.runner(key, config, dtype, device)(inputs.sets[0], inputs.outs[0])
            torch.cuda.synchronize()

    def baselines(self, key: Key, dtype: str, device: str) -> dict[str, Runner]:
        import torch

        runners: dict[str, Runner] = {"native": lambda args, out: torch.mm(args[0], args[1], out=out)}
        if device == "cuda":
            fg = flag_gems_mm_module()
            runners["untuned"] = lambda args, out: fg.mm_out(args[0], args[1], out=out)
        return runners

    def starting_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """The warm starts of tuner's own variants in this key's space (mm_starts), on the GPU."""
        if device != "cuda":
            return []
        return [self.canonical(key, c) for c in mm_starts(self.space(key, dtype, device), key[0])]

    def untuned_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """The config FlagGems' own LibTuner chose for this key: LibTuner.run leaves the config
        of its last call in `best_config`, and the untuned baseline has just run this key."""
        if device != "cuda":
            return []
        fg = flag_gems_mm_module()
        variant = flaggems_variant(key, dtype)
        tuner = fg.mm_kernel_general_host_tma if variant == "fg_tma" else fg.mm_kernel_general
        while not hasattr(tuner, "best_config") and hasattr(tuner, "fn"):
            tuner = tuner.fn
        cfg = getattr(tuner, "best_config", None)
        if cfg is None:
            return []
        kw = cfg.kwargs
        return [{
            "variant": variant, "BLOCK_M": kw["BLOCK_M"], "BLOCK_N": kw["BLOCK_N"], "BLOCK_K": kw["BLOCK_K"],
            "GROUP_M": FG_GROUP_M, "SPLIT_K": 1, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
        }]


def _fg_tma_runner(config: Config, dtype: str) -> Runner:
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    fg = flag_gems_mm_module()
    jit = jit_function(fg.mm_kernel_general_host_tma)
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    dtype_str = TORCH_NAMES[dtype]

    def run(args, out):
        a, b = args
        M, K = a.shape
        N = b.shape[1]
        b_row_major = b.stride(1) == 1
        # what matmul_tma_set_block_size_hook does for FlagGems' own configs
        a_desc = TensorDescriptor(a, a.shape, a.stride(), [bm, bk])
        if b_row_major:
            b_desc = TensorDescriptor(b, b.shape, b.stride(), [bk, bn])
        else:
            b_desc = TensorDescriptor(b, b.T.shape, b.T.stride(), [bn, bk])
        c_desc = TensorDescriptor(out, out.shape, out.stride(), [bm, bn])
        grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
        jit[grid](
            a_desc, b_desc, c_desc, M, N, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=FG_GROUP_M,
            A_ROW_MAJOR=True, B_ROW_MAJOR=b_row_major, dtype=dtype_str,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
        return out

    return run


def _fg_general_runner(config: Config) -> Runner:
    import torch
    import triton

    fg = flag_gems_mm_module()
    jit = jit_function(fg.mm_kernel_general)
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]

    def alloc(size: int, align: int, stream):
        return torch.empty(size, dtype=torch.int8, device="cuda")

    def run(args, out):
        a, b = args
        M, K = a.shape
        N = b.shape[1]
        triton.set_allocator(alloc)  # its device-side descriptors need scratch memory
        grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
        jit[grid](
            a, b, out, M, N, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=FG_GROUP_M,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
        return out

    return run
