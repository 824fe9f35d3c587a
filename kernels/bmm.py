"""Tunable batched GEMM: FlagGems' `bmm_kernel` (aten::bmm under FlagGems).

Key (BATCH, M, N, K, LAYOUT): out[b] = A[b] @ B[b] for b < BATCH, A[b] M x K, B[b] K x N.
LAYOUT says how the operands lie in memory, because FlagGems' cache key holds two strides:
- 0 `bmm`: A contiguous [BATCH, M, K], B contiguous [BATCH, K, N] (a plain torch.bmm);
- 1 `linear`: what F.linear on a sequence-first 3-D input reaches. A = X.permute(1, 0, 2) for a
  contiguous X [M, BATCH, K], and B = W.t() of one N x K weight, expanded over the batch (stride
  0). torch.matmul does not fold such an input into one mm unless the weight requires grad (then it
  copies the input: H200, torch 2.11, results/gemm_h200/session12/resampler), so with inference
  weights it calls bmm; MiniCPM-o's resampler
  (nn.MultiheadAttention, batch_first=False) projects its 1024 image positions x 10 slices this
  way: the image workload's largest GEMM (results/profile/PROFILE.md). transformers' LLM prefill
  meets it too: lm_head on the last position (a slice of the hidden states) at M=1.

FlagGems 5.0.2 runs one bmm kernel on every NVIDIA GPU (`flag_gems/ops/bmm.py`, no Hopper
module): a tiled GEMM per batch (grid z = BATCH) under a LibTuner over 12 yaml configs (TILE_M/N/K,
GROUP_M, num_warps, num_stages), key M, N, K (log2 strategy) and stride_am, stride_bk (align32),
plus the dtypes of A, B and out; DIVISIBLE_M/N/K come from triton.heuristics. The batch is not
in its key. Variant `fg_bmm`: that kernel launched with an explicit config, so a winner is
exactly one row of FlagGems' bmm cache. Variant `persistent`: tuner's batched persistent TMA GEMM
(kernels/persistent_bmm.py) on keys whose rows TMA can read, its tiles the same TILE_* dimensions.
GPU only here (FlagGems does not import in the interpreter; the persistent kernel's CPU tests run
it directly).
"""

from __future__ import annotations

from collections.abc import Mapping

from kernels.base import Config, Coverage, Inputs, KernelInputError, Key, Runner, torch_dtype
from kernels.flaggems_ops import op_module
from kernels.mm import HOST_DESC_KNOB, MM
from kernels.own_variants import OWN_SPACE_MODULES, PERSISTENT, WithOwnGemms, own_space
from tuner.devices import ELEM_BYTES

VARIANT = "fg_bmm"
TILE_KEYS = ("TILE_M", "TILE_N", "TILE_K")
CONFIG_KEYS = (*TILE_KEYS, "GROUP_M", "num_warps", "num_stages")
SPACE: dict[str, tuple] = {
    "TILE_M": (16, 32, 64, 128, 256),
    "TILE_N": (32, 64, 128, 256),
    "TILE_K": (32, 64, 128, 256),
    "GROUP_M": (1, 2, 4, 8),
    "num_warps": (2, 4, 8),
    "num_stages": (2, 3, 4, 5),
}
FG_MAX_TILE = (128, 128, 32)  # FlagGems' yaml list: its untuned pick stays reachable on small keys
LAYOUTS = {"bmm": 0, "linear": 1}
LAYOUT_NAMES = {v: k for k, v in LAYOUTS.items()}
NO_CPU = ("bmm has no CPU implementation: it runs FlagGems' Triton bmm kernel, which needs an "
          "NVIDIA GPU (use --device cuda)")

# MiniCPM-o 2.6 resampler (shared/facts/minicpmo-2.6.md): 64 queries x 3584, over the 32 x 32
# patch grid of each 448 x 448 slice; a 1344 x 1344 image gives 10 slices. Its k and v
# projections run as bmm with the linear layout, BATCH = positions, M = slices; its q projection
# likewise with BATCH = the 64 queries (H200, inference weights: results/gemm_h200/session12/resampler)
RESAMPLER_POSITIONS = 1024
RESAMPLER_QUERIES = 64
RESAMPLER_EMBED = 3584
RESAMPLER_SLICES = (1, 4, 10)
# transformers' Qwen2 prefill keeps the last position's logits (logits_to_keep=1): lm_head sees
# hidden[:, -1:, :], a slice matmul cannot fold, so it runs as bmm with one weight expanded over
# the batch: the linear layout at M=1 (FlagGems' key has no batch, one row serves every batch)
LM_HEAD = (1, 1, 151700, 3584, 1)


def flag_gems_bmm_module():
    """FlagGems' bmm module as loaded (its LibTuner cache lives in that module object)."""
    return op_module("bmm")


def as_config(cfg) -> Config:
    """A triton.Config of FlagGems' bmm list as a config of this space."""
    return BMM().as_config(cfg)


def operand_strides(key: Key) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(A strides, B strides) of the key's layout, as [batch, row, col] element strides."""
    batch, M, N, K, layout = key
    if layout == LAYOUTS["bmm"]:
        return (M * K, K, 1), (K * N, N, 1)
    return (K, batch * K, 1), (0, 1, K)  # X[M, BATCH, K].permute(1, 0, 2); W[N, K].t() expanded


COVERAGE = Coverage(aten_ops={"aten::bmm": "bmm"}, flaggems_op="bmm",
                    no_profile_keys="a profile row has the shapes but not the operand layout the key needs; "
                                    "pass them with --shape BATCH,M,N,K,bmm|linear",
                    injectors=("bmm_flaggems", "gemm_routes"))


class BMM(WithOwnGemms):
    name = "bmm"
    description = "batched GEMM A[b] @ B[b] (aten::bmm): FlagGems' bmm kernel"
    key_names = ("BATCH", "M", "N", "K", "LAYOUT")
    key_help = {"BATCH": "independent products b < BATCH", "M": "rows of A[b]", "N": "columns of B[b]",
                "K": "the inner dimension",
                "LAYOUT": "0 (bmm): contiguous A[b] M x K and B[b] K x N; 1 (linear): F.linear on a "
                          "sequence-first input, one N x K weight for every b (--shape BATCH,M,N,K,linear)"}
    source_modules = ("flag_gems.ops.bmm", "kernels.persistent_bmm", *OWN_SPACE_MODULES)
    fg_op, fg_kernel, variant = "bmm", "bmm_kernel", VARIANT
    config_keys, config_space, fg_max_tile = CONFIG_KEYS, SPACE, FG_MAX_TILE
    no_cpu = NO_CPU
    # GROUP_M is a dimension of FlagGems' bmm already; the batched kernel has no subtiled epilogue
    # and no host-descriptor form
    own_space = own_space(group=False, variants=(PERSISTENT,), lacks=("EPILOGUE_SUBTILE", HOST_DESC_KNOB))
    own_module = "kernels.persistent_bmm"

    def _mm_key(self, key: Key) -> Key:
        """mm's key the batched kernel's tiles are judged on: its rows are BATCH where it walks a
        shared weight's products the other way round (persistent_bmm.batch_as_rows)."""
        from kernels.persistent_bmm import batch_as_rows

        batch, M, N, K, layout = key
        return (batch if batch_as_rows(batch, M, layout == LAYOUTS["linear"]) else M, N, K, 1)

    def own_runner(self, mm_cfg: Config) -> Runner:
        from kernels.persistent_bmm import persistent_bmm

        return lambda args, out: persistent_bmm(args[0], args[1], mm_cfg, out=out)

    # ---- keys -------------------------------------------------------------------------
    def parse_key(self, text: str) -> Key:
        """'BATCH,M,N,K' (layout bmm) or 'BATCH,M,N,K,bmm|linear'."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        layout = LAYOUTS["bmm"]
        if len(parts) == 5:
            name = parts.pop().lower()
            by_number = {str(v): v for v in LAYOUTS.values()}  # LAYOUT as the tables print it
            if name not in LAYOUTS and name not in by_number:
                raise KernelInputError(
                    f"shape {text!r}: the 5th field is the layout, 'bmm' or {LAYOUTS['bmm']} (contiguous, "
                    f"default) or 'linear' or {LAYOUTS['linear']} (F.linear on a sequence-first input)")
            layout = LAYOUTS[name] if name in LAYOUTS else by_number[name]
        if len(parts) != 4:
            raise KernelInputError(f"shape {text!r} for op bmm must be BATCH,M,N,K (optionally ,bmm|linear)")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise KernelInputError(f"shape {text!r} must be integers BATCH,M,N,K") from None
        if min(dims) <= 0:
            raise KernelInputError(f"shape {text!r} must be positive integers")
        return (*dims, layout)

    def presets(self) -> Mapping[str, list[Key]]:
        d = RESAMPLER_EMBED
        resampler = [(batch, s, d, d, LAYOUTS["linear"]) for batch in (RESAMPLER_POSITIONS, RESAMPLER_QUERIES)
                     for s in RESAMPLER_SLICES]
        return {"minicpmo": [*resampler, LM_HEAD], "minicpmo-resampler": resampler, "minicpmo-llm": [LM_HEAD]}

    def flops(self, key: Key) -> float:
        batch, M, N, K, _ = key
        return 2.0 * batch * M * N * K

    def bytes_per_set(self, key: Key, dtype: str) -> int:
        batch, M, N, K, layout = key
        b_elems = K * N if layout == LAYOUTS["linear"] else batch * K * N  # one shared weight
        return (batch * M * K + b_elems + batch * M * N) * ELEM_BYTES[dtype]

    # ---- search space -------------------------------------------------------------------
    def canonical(self, key: Key, config: Config) -> Config:
        c = super().canonical(key, config)
        rows = self._mm_key(key)[0] if c["variant"] in self.own_variants else key[1]
        if -(-rows // c["TILE_M"]) == 1:
            c["GROUP_M"] = 1  # one row of tiles: the reordering cannot change anything
        return c

    def mnk(self, key: Key) -> tuple[int, int, int]:
        return key[1:4]

    def key_invalid_reason(self, key: Key) -> str | None:
        layout = key[4]
        return None if layout in LAYOUT_NAMES else f"unknown layout {layout}"

    # ---- running ------------------------------------------------------------------------
    def make_inputs(self, key: Key, dtype: str, device: str, n_sets: int, seed: int) -> Inputs:
        """(A, B) per set in the key's layout; the output is a contiguous [BATCH, M, N]."""
        import torch

        batch, M, N, K, layout = key
        dt = torch_dtype(dtype)
        g = torch.Generator(device=device).manual_seed(seed)
        sets, outs = [], []
        for _ in range(n_sets):
            if layout == LAYOUTS["bmm"]:
                a = torch.randn((batch, M, K), generator=g, device=device, dtype=dt)
                b = torch.randn((batch, K, N), generator=g, device=device, dtype=dt)
            else:
                a = torch.randn((M, batch, K), generator=g, device=device, dtype=dt).permute(1, 0, 2)
                w = torch.randn((N, K), generator=g, device=device, dtype=dt) * K ** -0.5
                b = w.t().expand(batch, K, N)
            sets.append((a, b))
            outs.append(torch.empty((batch, M, N), device=device, dtype=dt))
        return Inputs(sets=sets, outs=outs)

    def reference(self, args: tuple):
        """fp32 without TF32 on the GPU, fp64 on the CPU (mm's reference, batched). A weight
        expanded over the batch is used as the one matrix it is: converting the expanded view
        would materialise BATCH copies (26 GB for the resampler key)."""
        a, b = args
        if b.stride(0) == 0:
            b = b[0]
        return MM.reference(self, (a, b))

    def launcher(self, jit, config: Config) -> Runner:
        return _fg_bmm_runner(jit, config)

    def native_runner(self) -> Runner:
        import torch

        return lambda args, out: torch.bmm(args[0], args[1], out=out)

    def untuned_runner(self, fg) -> Runner:
        return lambda args, out: fg.bmm_out(args[0], args[1], out)


def _fg_bmm_runner(jit, config: Config) -> Runner:
    """FlagGems' bmm_out body with the LibTuner bypassed: its JIT function `jit`, one config, and
    the DIVISIBLE_* flags its triton.heuristics would have computed."""
    import triton

    tm, tn, tk = (config[k] for k in TILE_KEYS)

    def run(args, out):
        a, b = args
        batch, M, K = a.shape
        N = b.shape[2]
        grid = (triton.cdiv(M, tm), triton.cdiv(N, tn), batch)
        jit[grid](
            a, b, out, M, N, K,
            a.stride(0), a.stride(1), a.stride(2), b.stride(0), b.stride(1), b.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            TILE_M=tm, TILE_N=tn, TILE_K=tk, GROUP_M=config["GROUP_M"],
            DIVISIBLE_M=M % tm == 0, DIVISIBLE_N=N % tn == 0, DIVISIBLE_K=K % tk == 0,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
        return out

    return run
