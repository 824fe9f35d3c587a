"""Tunable fused MoE: FlagGems' fused-MoE Triton kernel (ported from vLLM's fused_experts).

Key (E, N, K, top_k, M) with vLLM's names: E experts, N the per-partition intermediate size,
K the hidden size, top_k experts per token, M tokens. w1 is [E, 2N, K] (rows :N are the gate,
N: the up projection: FlagGems' silu_and_mul takes silu of the first half), w2 is [E, K, N].
One config (vLLM's six keys) drives both GEMMs of a forward, as in vLLM and FlagGems, so a
winner is exactly one entry of a vLLM config JSON and of FlagGems' MoE lookup.

The kernel only runs on an NVIDIA GPU (FlagGems does not import under TRITON_INTERPRET=1):
on the CPU every config is invalid and the runner refuses, clearly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

from kernels.base import (
    Config,
    Inputs,
    Kernel,
    KernelInputError,
    Key,
    next_pow2,
    precompile_by_running,
    Runner,
    torch_dtype,
)

CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
# vLLM's tuner grid (benchmarks/kernels/benchmark_moe.py), plus GROUP_SIZE_M=8, which FlagGems'
# default config picks: the untuned choice must be a point of the space (warm start)
SPACE: dict[str, tuple] = {
    "BLOCK_SIZE_M": (16, 32, 64, 128, 256),
    "BLOCK_SIZE_N": (32, 64, 128, 256),
    "BLOCK_SIZE_K": (64, 128, 256),
    "GROUP_SIZE_M": (1, 8, 16, 32, 64),
    "num_warps": (4, 8),
    "num_stages": (2, 3, 4, 5),
}
ELEM_BYTES = {"bf16": 2, "fp16": 2}
SMEM_BY_ARCH = {9: 232448, 8: 166912}  # per-block opt-in shared memory (bytes)
SMEM_DEFAULT = 101376
SPARSITY_FACTOR = 4  # FlagGems/vLLM: M*top_k*4 <= E gives every routed token its own block
SERVING_M = (1, 16, 64, 256, 1024, 4096)
# model -> (E, per-partition N for TP=1 and TP=2, K, top_k)
MODELS = {
    "qwen3-30b-a3b": (128, (768, 384), 2048, 8),
    "mixtral-8x7b": (8, (14336, 7168), 4096, 2),
}
NO_CPU = ("fused_moe has no CPU implementation: it runs FlagGems' Triton kernel, which needs an "
          "NVIDIA GPU (use --device cuda)")


def naive_assignment(key: Key) -> bool:
    """FlagGems' fused_experts_impl skips moe_align_block_size for very sparse routing."""
    E, _, _, top_k, M = key
    return M * top_k * SPARSITY_FACTOR <= E


def m_blocks(key: Key, block_m: int) -> tuple[int, int]:
    """Row-block count of (GEMM1, GEMM2) as invoke_fused_moe_triton_kernel computes its EM."""
    E, _, _, top_k, M = key
    slots = M * top_k
    if naive_assignment(key):
        return slots, slots
    padded = slots + E * (block_m - 1)  # moe_align_block_size's sorted_token_ids length
    em1 = min(padded, slots * block_m) if M < block_m else padded  # GEMM1: A has M rows
    em2 = min(padded, slots * block_m) if slots < block_m else padded  # GEMM2: M*top_k rows
    return math.ceil(em1 / block_m), math.ceil(em2 / block_m)


def route(logits, top_k: int):
    """vLLM's fused_topk with renormalize=True (Qwen3-MoE and Mixtral both renormalise):
    softmax over the router logits in fp32, top-k, weights rescaled to sum to 1; ids int32."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.contiguous(), ids.to(torch.int32).contiguous()


# ---- vLLM's shipped configs (read from the installed wheel, never copied) -----------------
def vllm_device_name(gpu_name: str) -> str:
    """vLLM's config-file device part: spaces and '/' -> '_'; any H200 is NVIDIA_H200."""
    name = re.sub(r"[\s/]+", "_", gpu_name)
    return "NVIDIA_H200" if "H200" in name.split("_") else name


SHIPPED_DIR_ENV = "TUNER_VLLM_SHIPPED_CONFIGS"


def vllm_config_folder() -> Path | None:
    """Where vLLM's shipped configs are read: $TUNER_VLLM_SHIPPED_CONFIGS (the configs folder
    copied out of a vllm wheel, for a GPU host without vllm), else the installed vllm package
    (located without importing it: it is installed --no-deps and its import is heavy)."""
    import importlib.util
    import os

    if os.environ.get(SHIPPED_DIR_ENV):
        folder = Path(os.environ[SHIPPED_DIR_ENV])
        if not folder.is_dir():
            raise KernelInputError(f"${SHIPPED_DIR_ENV}={folder} is not a folder")
        return folder
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model_executor/layers/fused_moe/configs"


def vllm_config_path(E: int, N: int, gpu_name: str) -> Path | None:
    """The bf16 config file vLLM ships for (E, N) on this GPU, or None."""
    folder = vllm_config_folder()
    if folder is None:
        return None
    path = folder / f"E={E},N={N},device_name={vllm_device_name(gpu_name)}.json"
    return path if path.is_file() else None


def vllm_shipped_config(key: Key, gpu_name: str) -> Config | None:
    """The config vLLM would use for this key from its shipped file: nearest M, ties to the
    smaller (vLLM: min over the file's M keys by |m - M|)."""
    E, N, _, _, M = key
    path = vllm_config_path(E, N, gpu_name)
    if path is None:
        return None
    table = {int(m): c for m, c in json.loads(path.read_text()).items() if m.isdigit()}
    best = min(table, key=lambda m: abs(m - M))
    return {k: int(table[best][k]) for k in CONFIG_KEYS}


# ---- FlagGems ------------------------------------------------------------------------------
def _fg_moe():
    import importlib

    return importlib.import_module("flag_gems.fused.fused_moe")


def flaggems_default_config(key: Key) -> Config:
    """FlagGems' heuristic config (what 5.0.2 runs: its embedded table is not shipped)."""
    E, N, K, top_k, M = key
    return {k: int(v) for k, v in _fg_moe().get_default_config(M, E, N, K, top_k, None, None).items()
            if k in CONFIG_KEYS}


def flaggems_untuned_config(key: Key) -> Config:
    """What fused_experts_impl looks up for this key on this GPU, bypassing tuner's own hook."""
    E, N, K, top_k, M = key
    fm = _fg_moe()
    lookup = fm.try_get_optimal_moe_config
    lookup = getattr(lookup, "__tuner_original__", lookup)
    cfg = lookup((E, 2 * N, K), (E, K, N), top_k, None, M, E)
    return {k: int(cfg[k]) for k in CONFIG_KEYS}


def _fg_runner(key: Key, config: Config, dtype: str) -> Runner:
    """fused_experts_impl's bf16/fp16 path for one chunk, step by step with FlagGems' own
    functions, but with the given config and the output written into `out`: calling
    fused_experts_impl itself would add a copy of its freshly allocated output to every timed
    call. Buffers are allocated once per runner (same sizes every call: CUDA-graph safe).
    tests/kernels/test_fused_moe.py checks bit-equality with fused_experts_impl on the GPU."""
    import torch
    import triton.language as tl

    fm = _fg_moe()
    E, N, K, top_k, M = key
    cfg = {k: int(config[k]) for k in CONFIG_KEYS}
    bm = cfg["BLOCK_SIZE_M"]
    naive = naive_assignment(key)
    compute_type = {"bf16": tl.bfloat16, "fp16": tl.float16}[dtype]
    flags = {"use_fp8_w8a8": False, "use_int8_w8a8": False, "use_int8_w8a16": False,
             "use_int4_w4a16": False, "per_channel_quant": False, "block_shape": None}
    bufs: list = []

    def run(args, out):
        x, w1, w2, topk_weights, topk_ids = args
        if not bufs:
            # cache1 and cache3 share memory, as in fused_experts_impl (same L2 footprint)
            c13 = torch.empty(M * top_k * max(2 * N, K), device=x.device, dtype=x.dtype)
            bufs.extend([c13[: M * top_k * 2 * N].view(M, top_k, 2 * N),
                         torch.empty((M * top_k, N), device=x.device, dtype=x.dtype),
                         c13[: M * top_k * K].view(M, top_k, K)])
        c1, c2, c3 = bufs
        if naive:
            sorted_ids, expert_ids = None, topk_ids.view(-1)
            post_pad = torch.empty((1,), dtype=torch.int32, device=x.device)
            post_pad.fill_(topk_ids.numel() * bm)
        else:
            sorted_ids, expert_ids, post_pad = fm.moe_align_block_size(topk_ids, bm, E, None)
        fm.dispatch_fused_moe_kernel(x, w1, c1, None, None, None, topk_weights, sorted_ids, expert_ids,
                                     post_pad, False, top_k, cfg, compute_type=compute_type, **flags)
        fm.apply_moe_activation(fm.MoEActivation.SILU, c2, c1.view(-1, 2 * N))
        fm.dispatch_fused_moe_kernel(c2, w2, c3, None, None, None, topk_weights, sorted_ids, expert_ids,
                                     post_pad, True, 1, cfg, compute_type=compute_type, **flags)
        fm.moe_sum(c3, out)
        return out

    return run


class FusedMoE(Kernel):
    name = "fused_moe"
    description = "fused MoE (silu gate/up, top-k routing): FlagGems' fused_moe_kernel, vLLM's config format"
    key_names = ("E", "N", "K", "top_k", "M")
    dtypes = ("bf16", "fp16")
    devices = ("cuda",)
    source_modules = ("flag_gems.fused.fused_moe",)

    # ---- keys -------------------------------------------------------------------------
    def parse_key(self, text: str) -> Key:
        key = super().parse_key(text)
        E, _, _, top_k, _ = key
        if top_k > E:
            raise KernelInputError(f"shape {text!r}: top_k={top_k} exceeds the number of experts E={E}")
        return key

    def presets(self) -> Mapping[str, list[Key]]:
        return {name: [(E, n, K, top_k, m) for n in ns for m in SERVING_M]
                for name, (E, ns, K, top_k) in MODELS.items()}

    def flops(self, key: Key) -> float:
        _, N, K, top_k, M = key
        return 2.0 * M * top_k * (2 * N * K + K * N)

    def bytes_per_set(self, key: Key, dtype: str) -> int:
        """Hidden in, out, routing, and the weights of the experts the tokens can reach."""
        E, N, K, top_k, M = key
        experts = min(E, M * top_k)  # at most this many experts' weights are read
        return ELEM_BYTES[dtype] * (2 * M * K + experts * 3 * N * K) + 8 * M * top_k

    # ---- search space -------------------------------------------------------------------
    def space(self, key: Key, dtype: str, device: str) -> dict[str, tuple]:
        return dict(SPACE)

    def canonical(self, key: Key, config: Config) -> Config:
        """GROUP_SIZE_M >= the row-block count of both GEMMs all give the same block order
        (one group holds every row): keep the smallest such value of the space."""
        c = dict(config)
        rows = max(m_blocks(key, c["BLOCK_SIZE_M"]))
        enough = min((g for g in SPACE["GROUP_SIZE_M"] if g >= rows), default=None)
        if enough is not None and c["GROUP_SIZE_M"] >= enough:
            c["GROUP_SIZE_M"] = enough
        return c

    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        if device != "cuda":
            return NO_CPU
        if dtype not in self.dtypes:
            return f"fused_moe runs {', '.join(self.dtypes)}, not {dtype}"
        E, N, K, top_k, M = key
        bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
        # an expert gets at most M tokens (top-k experts are distinct): taller tiles only pad
        if naive_assignment(key) and bm > 16:
            return (f"M*top_k*{SPARSITY_FACTOR}={M * top_k * SPARSITY_FACTOR} <= E={E}: every routed token gets "
                    f"its own block, so BLOCK_SIZE_M={bm} > 16 only adds masked rows")
        if bm > max(16, next_pow2(M)):
            return f"BLOCK_SIZE_M={bm} exceeds the most tokens one expert can get (M={M}, M*top_k={M * top_k})"
        # one config serves GEMM1 (N-dim 2N, K-dim K) and GEMM2 (N-dim K, K-dim N)
        if bn > max(32, next_pow2(max(2 * N, K))):
            return f"BLOCK_SIZE_N={bn} exceeds both GEMMs' output width (2N={2 * N}, K={K})"
        if bk > max(64, next_pow2(max(K, N))):
            return f"BLOCK_SIZE_K={bk} exceeds both GEMMs' reduction length (K={K}, N={N})"
        smem = (bm * bk + bk * bn) * ELEM_BYTES[dtype] * config["num_stages"]
        limit = SMEM_BY_ARCH.get(arch, SMEM_DEFAULT)
        if smem > limit:
            return f"needs {smem} B of shared memory for {config['num_stages']} stages, the limit is {limit}"
        return None

    # ---- running ------------------------------------------------------------------------
    def make_inputs(self, key: Key, dtype: str, device: str, n_sets: int, seed: int) -> Inputs:
        """Each set has its own weights (not read from L2) and its own routing (fresh random
        router logits), as vLLM's tuner draws them."""
        import torch

        E, N, K, top_k, M = key
        dt = torch_dtype(dtype)
        g = torch.Generator(device=device).manual_seed(seed)
        sets, outs = [], []
        for _ in range(n_sets):
            x = torch.randn((M, K), generator=g, device=device, dtype=dt)
            # scaled so activations stay O(1) whatever K and N are
            w1 = torch.randn((E, 2 * N, K), generator=g, device=device, dtype=dt).mul_(K ** -0.5)
            w2 = torch.randn((E, K, N), generator=g, device=device, dtype=dt).mul_(N ** -0.5)
            logits = torch.randn((M, E), generator=g, device=device, dtype=torch.float32)
            weights, ids = route(logits, top_k)
            sets.append((x, w1, w2, weights, ids))
            outs.append(torch.empty((M, K), device=device, dtype=dt))
        return Inputs(sets=sets, outs=outs)

    def reference(self, args: tuple):
        """Per expert (gather its tokens): out = sum_k w_k * (silu(x W1g^T) * (x W1u^T)) W2^T.
        fp64 on the CPU, fp32 without TF32 on the GPU; a loop over experts, not tokens, so a
        4096-token check stays fast."""
        import torch
        import torch.nn.functional as F

        x, w1, w2, weights, ids = args
        acc = torch.float32 if x.is_cuda else torch.float64
        N = w2.shape[2]
        out = torch.zeros((x.shape[0], w2.shape[1]), device=x.device, dtype=acc)
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            for e in torch.unique(ids).tolist():
                tok, slot = (ids == e).nonzero(as_tuple=True)
                h = x[tok].to(acc) @ w1[e].to(acc).T
                y = (F.silu(h[:, :N]) * h[:, N:]) @ w2[e].to(acc).T
                out.index_add_(0, tok, y * weights[tok, slot].to(acc)[:, None])
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        return out

    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        if device != "cuda":
            raise KernelInputError(NO_CPU)
        return _fg_runner(key, config, dtype)

    def precompile(self, key: Key, config: Config, dtype: str, device: str) -> None:
        precompile_by_running(self, key, config, dtype, device)

    def baselines(self, key: Key, dtype: str, device: str) -> dict[str, Runner]:
        """untuned: FlagGems' own config choice. vllm_shipped: the config vLLM ships for this
        GPU, where it ships one. Both through the same launcher as every candidate. (A torch
        loop over experts is no fair native: it is the correctness reference instead.)"""
        if device != "cuda":
            return {}
        import torch

        runners = {"untuned": self.runner(key, flaggems_untuned_config(key), dtype, device)}
        shipped = vllm_shipped_config(key, torch.cuda.get_device_name())
        if shipped is not None and dtype in ("bf16", "fp16"):
            runners["vllm_shipped"] = self.runner(key, shipped, dtype, device)
        return runners

    def untuned_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        if device != "cuda":
            return []
        import torch

        out = [flaggems_untuned_config(key)]
        shipped = vllm_shipped_config(key, torch.cuda.get_device_name())
        if shipped is not None:
            out.append(shipped)
        return out

    # ---- identity -----------------------------------------------------------------------
    def source_hash(self, config: Config | None = None) -> str:
        """sha256 of FlagGems' fused_moe_kernel Triton source (what a config is tuned for)."""
        import hashlib

        from triton.runtime.jit import JITFunction

        fn = _fg_moe().fused_moe_kernel
        while not isinstance(fn, JITFunction):
            fn = fn.fn
        return hashlib.sha256(fn.src.encode()).hexdigest()
