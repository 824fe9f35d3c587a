"""Tunable attention: FlagGems' Triton flash-attention forward kernel, `flash_fwd_kernel`.

Which FlagGems kernel a MiniCPM-o SDPA call reaches (FlagGems 5.0.2, read from its source):
1. flag_gems/__init__.py registers one attention op over ATen, `("_flash_attention_forward",
   flash_attention_forward)`: not `scaled_dot_product_attention`, nor the cuDNN / efficient / flash
   SDPA entry points. Torch picks the SDPA backend first (sdp_utils.cpp `select_sdp_backend`) and only
   its flash backend (`_scaled_dot_product_flash_attention` calls `at::_flash_attention_forward`)
   reaches FlagGems. On sm90 with cuDNN > 9.15 torch puts cuDNN first
   (`check_prefer_cudnn_attention`) and cuDNN accepts every MiniCPM-o case: the H100 profile with
   FlagGems enabled ran `aten::_cudnn_attention_forward` for the vision SDPA. FlagGems' kernel runs
   only after `torch.backends.cuda.enable_cudnn_sdp(False)` (or TORCH_CUDNN_SDPA_DEPRIORITIZED=1),
   for calls without attn_mask and, when causal, with q_len == kv_len (flash's own constraints).
2. ops/attention.py `flash_attention_forward` zero-pads a head dim outside FG_HEAD_DIMS to the next
   one (vision 72 -> 96) and calls flash_api.mha_fwd.
3. `mha_fwd`: for q_len == 1 with fewer kv heads it moves the query groups into the sequence
   (`seqlenq_ngroups_swapped`: decode 28/4 heads -> 7 rows over 4 heads); its `dispatch` runs the
   split-KV kernels (fixed heuristics: BLOCK_M 128|64, BLOCK_N 64|32, 4 warps, 3 stages) when
   `splits_heuristic` sees one partly filled wave (< 80 % of the SMs), else `flash_fwd_kernel`.
4. `flash_fwd_kernel` = libentry(triton.autotune(configs, key=["d", "is_dropout"])(heuristics(
   BLOCK_K, PRE_LOAD_V=False, IS_EVEN_MN)(jit))), configs = tune_configs.yaml "attention" filtered
   by `keep` to (BLOCK_M 128, BLOCK_N 32, 4 warps) and (128, 128, 8 warps) x PRE_LOAD_V x 2..4
   stages = 12. The heuristics run after the autotuner and overwrite PRE_LOAD_V, so those are 6
   programs and PRE_LOAD_V is no parameter here. This is the tunable kernel: its choice lives in
   the in-memory `Autotuner.cache` (tuner/inject/attention_cache.py seeds it).
5. ops/attention.py `_attn_fwd` (LibTuner) serves only flag_gems.ops.scaled_dot_product_attention
   called directly, which no aten op reaches.

On an H100 SXM (132 SMs) LLM prefill 1x28/4x{512,2048} causal, vision 10x16x1024x72, Whisper
1x16x1500x64 and LLM decode at batch 64 run flash_fwd_kernel; decode at batch 1 and 16 runs
split-KV (fixed heuristics, not tunable), so the preset leaves those out.

Layout: q (batch, q_len, heads, head_dim), k and v (batch, kv_len, kv_heads, head_dim), contiguous:
what the projections produce and what torch's flash path hands FlagGems (SDPA's (b, h, s, d) views
transposed back). Every runner calls the op as served and copies its result into the output
buffer (torch's SDPA has no out=, FlagGems' aten op allocates its own), so all pay the same copy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

from kernels.base import (
    Config,
    Coverage,
    Inputs,
    Kernel,
    KernelInputError,
    Key,
    Runner,
    next_pow2,
    precompile_by_running,
    torch_dtype,
)
from kernels.flaggems_ops import op_module
from tuner.devices import ELEM_BYTES

CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
# a superset of FlagGems' list (BLOCK_M, BLOCK_N 32..128, 4|8 warps, 2..4 stages, before `keep`)
SPACE: dict[str, tuple] = {
    "BLOCK_M": (16, 32, 64, 128, 256),
    "BLOCK_N": (16, 32, 64, 128, 256),
    "num_warps": (2, 4, 8, 16),
    "num_stages": (1, 2, 3, 4, 5),
}
FG_HEAD_DIMS = (16, 32, 64, 96, 128, 192, 256)  # flash_attention_forward's supported_head_dims
FG_BLOCK = 128  # FlagGems' configs use BLOCK_M 128 and BLOCK_N <= 128: reachable for every key
SMEM_BY_ARCH = {9: 232448, 8: 166912}  # per-block opt-in shared memory (bytes)
SMEM_DEFAULT = 101376
H100_SMS = 132  # an H100 SXM: what the preset's split-KV exclusions assume
# key: batch, heads, kv_heads, q_len, kv_len, head_dim, causal (shared/facts/minicpmo-2.6.md)
MINICPMO = [
    (1, 28, 4, 512, 512, 128, 1),  # LLM prefill
    (1, 28, 4, 2048, 2048, 128, 1),
    (64, 28, 4, 1, 2048, 128, 0),  # LLM decode; batch 1 and 16 go to split-KV on an H100
    (10, 16, 16, 1024, 1024, 72, 0),  # vision encoder, 10 slices
    (1, 16, 16, 1500, 1500, 64, 0),  # Whisper encoder, 30 s
]
NO_CPU = ("attention has no CPU implementation: it runs FlagGems' Triton flash-attention kernel, "
          "which needs an NVIDIA GPU (use --device cuda)")
_BACKENDS = {"FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient", "CUDNN_ATTENTION": "cudnn",
             "MATH": "math"}


# ---- shapes as FlagGems sees them ----------------------------------------------------------
def padded_head_dim(head_dim: int) -> int:
    """The head dim flash_fwd_kernel runs (its autotuner key `d`)."""
    return next(d for d in FG_HEAD_DIMS if d >= head_dim)


def flaggems_rows(key: Key) -> tuple[int, int]:
    """(query rows, heads) per batch entry after mha_fwd's decode group swap."""
    _, H, Hkv, Sq, _, _, _ = key
    return (H // Hkv, Hkv) if Sq == 1 and H > Hkv else (Sq, H)


def attended_pairs(key: Key) -> int:
    """(query, key) pairs one head attends: bottom-right causal lets query i see i + kv_len - q_len + 1."""
    _, _, _, Sq, Skv, _, causal = key
    return Sq * (Skv - Sq) + Sq * (Sq + 1) // 2 if causal else Sq * Skv


# ---- FlagGems ---------------------------------------------------------------------------------
def autotuner():
    """The triton Autotuner inside FlagGems' `flash_fwd_kernel` LibEntry."""
    from triton.runtime.autotuner import Autotuner

    tuner = op_module("flash_kernel").flash_fwd_kernel.fn
    if not isinstance(tuner, Autotuner):
        raise RuntimeError("FlagGems' flash_fwd_kernel is no longer a triton.autotune kernel: re-read flash_kernel.py")
    return tuner


def flaggems_path(key: Key, num_sms: int) -> str:
    """'flash_fwd' or 'splitkv': what mha_fwd's dispatch runs for this key on `num_sms` SMs.
    Its splits_heuristic is a nested function: rebuilt from mha_fwd's own code object."""
    import types

    fa, fk = op_module("flash_api"), op_module("flash_kernel")
    code = next((c for c in fa.mha_fwd.__code__.co_consts
                 if isinstance(c, types.CodeType) and c.co_name == "splits_heuristic"), None)
    if code is None or code.co_freevars:
        raise RuntimeError("FlagGems' mha_fwd has no self-contained splits_heuristic: re-read flash_api.py")
    splits = types.FunctionType(code, vars(fa))
    B, _, _, _, Skv, D, _ = key
    rows, heads = flaggems_rows(key)
    d = padded_head_dim(D)
    tasks = B * heads * math.ceil(rows / fk.block_m_splitkv_heuristic(d))
    n_blocks = math.ceil(Skv / fk.block_n_splitkv_heuristic(d))
    return "splitkv" if splits(tasks, num_sms, n_blocks) > 1 else "flash_fwd"


def runtime_key(head_dim: int, dtype: str) -> tuple:
    """The Autotuner.cache key of mha_fwd's call for a padded head dim, as triton 3.x's
    Autotuner.run builds it: the key arguments' values, then str(dtype) of every tensor
    argument in signature order (q, k, v, out; p and lse fp32; philox_args int64)."""
    import torch
    import triton

    if not triton.__version__.startswith("3."):
        raise RuntimeError(f"triton {triton.__version__}: Autotuner.run's key layout must be re-read")
    tuner = autotuner()
    dt = torch_dtype(dtype)
    values = {"d": head_dim, "is_dropout": False}
    tensors = {"q_ptr": dt, "k_ptr": dt, "v_ptr": dt, "o_ptr": dt, "p_ptr": torch.float32,
               "softmax_lse_ptr": torch.float32, "philox_args": torch.int64}
    if set(tuner.keys) - set(values):
        raise RuntimeError(f"flash_fwd_kernel's autotune key is {tuner.keys}, not {list(values)}")
    return (*(values[k] for k in tuner.keys), *(str(tensors[n]) for n in tuner.arg_names if n in tensors))


def triton_config(config: Config):
    """A config of the space as the triton.Config the autotuner holds (FlagGems' own object when
    it is in its list: PRE_LOAD_V=False, as the heuristic forces it anyway)."""
    import triton

    want = {k: int(config[k]) for k in CONFIG_KEYS}
    for c in autotuner().configs:
        if not c.kwargs.get("PRE_LOAD_V") and as_space_config(c) == want:
            return c
    return triton.Config({"BLOCK_M": want["BLOCK_M"], "BLOCK_N": want["BLOCK_N"], "PRE_LOAD_V": False},
                         num_warps=want["num_warps"], num_stages=want["num_stages"])


def as_space_config(c) -> Config:
    return {"BLOCK_M": int(c.kwargs["BLOCK_M"]), "BLOCK_N": int(c.kwargs["BLOCK_N"]),
            "num_warps": int(c.num_warps), "num_stages": int(c.num_stages)}


def flaggems_configs() -> list[Config]:
    """FlagGems' own config list as points of the space (PRE_LOAD_V twins are one program)."""
    out: list[Config] = []
    for c in autotuner().configs:
        if as_space_config(c) not in out:
            out.append(as_space_config(c))
    return out


def clear_compiled() -> None:
    """Empty LibEntry's compiled-kernel cache: once filled for an argument specialisation it
    launches without asking the autotuner, so a changed choice would not be seen."""
    for cache in op_module("flash_kernel").flash_fwd_kernel.kernel_cache:
        cache.clear()


def forget_choice(head_dim: int, dtype: str) -> None:
    """Make FlagGems' autotuner decide again for this padded head dim and dtype."""
    autotuner().cache.pop(runtime_key(head_dim, dtype), None)
    clear_compiled()


class _FixedConfig:
    """Stands in for flash_fwd_kernel inside mha_fwd: launches the heuristics layer below the
    autotuner with one config, exactly the call Autotuner.run makes once it has chosen."""

    def __init__(self, config: Config):
        self.heuristics = autotuner().fn
        self.kwargs = triton_config(config).all_kwargs()

    def __getitem__(self, grid):
        return lambda *args: self.heuristics.run(*args, grid=grid, warmup=False, **self.kwargs)


@contextlib.contextmanager
def _fixed_kernel(fixed: _FixedConfig):
    fa = op_module("flash_api")
    saved = fa.flash_fwd_kernel  # mha_fwd's dispatch reads the module global at call time
    fa.flash_fwd_kernel = fixed
    try:
        yield
    finally:
        fa.flash_fwd_kernel = saved


def _flaggems_call(key: Key, args: tuple, disable_splitkv: bool):
    """FlagGems' aten `_flash_attention_forward` as torch's flash SDPA calls it (scale None)."""
    _, _, _, Sq, Skv, _, causal = key
    q, k, v, _ = args
    return op_module("attention").flash_attention_forward(q, k, v, None, None, Sq, Skv, 0.0, bool(causal), False,
                                                    disable_splitkv=disable_splitkv)[0]


def _fg_runner(key: Key, config: Config) -> Runner:
    fixed = _FixedConfig(config)

    def run(args, out):
        with _fixed_kernel(fixed):
            res = _flaggems_call(key, args, disable_splitkv=True)
        return out.copy_(res)

    return run


def _untuned_runner(key: Key, dtype: str) -> Runner:
    """FlagGems as served, split-KV included. Served, its autotuner decides once per (head dim,
    dtype), on the first shape it meets; here each runner lets it decide on this key (its best
    case) at its first call."""
    fresh = [True]

    def run(args, out):
        if fresh:
            fresh.clear()
            forget_choice(padded_head_dim(key[5]), dtype)
        return out.copy_(_flaggems_call(key, args, disable_splitkv=False))

    return run


# ---- torch ------------------------------------------------------------------------------------
def _sdpa_args(key: Key, args: tuple):
    """SDPA's (b, h, s, d) views, mask and flags; causal with q_len < kv_len needs the
    bottom-right mask object (is_causal is top-left aligned)."""
    from torch.nn.attention.bias import causal_lower_right

    _, H, Hkv, Sq, Skv, _, causal = key
    q, k, v, _ = args
    lower_right = bool(causal) and Sq != Skv
    mask = causal_lower_right(Sq, Skv) if lower_right else None
    return (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)), {
        "attn_mask": mask, "is_causal": bool(causal) and not lower_right, "enable_gqa": H != Hkv}


def sdpa_backend(key: Key, dtype: str, flash_only: bool = False) -> str | None:
    """The backend torch's SDPA picks for this key on the GPU ('flash', 'cudnn', 'efficient',
    'math'), 'none' when flash_only and flash refuses, None when not decidable (mask object)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qkv, kw = _sdpa_args(key, _empty_set(key, dtype))
    if kw["attn_mask"] is not None:
        return None
    ctx = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if flash_only else contextlib.nullcontext()
    with ctx:
        try:
            choice = torch._fused_sdp_choice(*qkv, None, 0.0, kw["is_causal"], enable_gqa=kw["enable_gqa"])
        except RuntimeError:
            return "none"
    names = {int(b.value): _BACKENDS.get(n, n.lower()) for n, b in SDPBackend.__members__.items()}
    return names.get(int(choice), str(choice))


def _native_runner(key: Key, flash_only: bool) -> Runner:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(args, out):
        qkv, kw = _sdpa_args(key, args)
        ctx = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if flash_only else contextlib.nullcontext()
        with ctx:
            res = F.scaled_dot_product_attention(*qkv, **kw)
        return out.copy_(res.transpose(1, 2))

    return run


def _empty_set(key: Key, dtype: str) -> tuple:
    import torch

    B, H, Hkv, Sq, Skv, D, causal = key
    kw = {"device": "cuda", "dtype": torch_dtype(dtype)}
    return (torch.empty((B, Sq, H, D), **kw), torch.empty((B, Skv, Hkv, D), **kw),
            torch.empty((B, Skv, Hkv, D), **kw), bool(causal))


def attention_reference(q, k, v, causal: bool):
    """softmax(q k^T / sqrt(head_dim)) v; query head h reads kv head h // (heads / kv_heads) (GQA);
    causal is aligned bottom-right (query i sees keys j <= i + kv_len - q_len), as flash does.
    q (b, q_len, h, d), k and v (b, kv_len, kv_h, d) -> (b, q_len, h, d); fp64 on the CPU,
    fp32 without TF32 on the GPU."""
    import torch

    acc = torch.float32 if q.is_cuda else torch.float64
    Sq, H, D = q.shape[1:]
    Skv, Hkv = k.shape[1:3]
    qh = q.to(acc).transpose(1, 2)
    kh, vh = (t.to(acc).transpose(1, 2).repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        s = (qh @ kh.transpose(-1, -2)) * D ** -0.5
        if causal:
            i = torch.arange(Sq, device=q.device)[:, None]
            j = torch.arange(Skv, device=q.device)[None, :]
            s = s.masked_fill(j > i + (Skv - Sq), float("-inf"))
        return (torch.softmax(s, dim=-1) @ vh).transpose(1, 2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


_BHLD = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
         "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
         "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_flash_attention_for_cpu")
_BLHD = ("aten::_flash_attention_forward", "aten::_efficient_attention_forward")
# torch's attention ops (q, k as (B, H, L, D) or (B, L, H, D)) and vLLM's flash / unified attention
COVERAGE = Coverage(aten_ops={**dict.fromkeys(_BHLD, "bhld"), **dict.fromkeys(_BLHD, "blhd")},
                    op_patterns=("flash_attn", "unified_attention"), injectors=("attention_flaggems",))


class Attention(Kernel):
    name = "attention"
    description = "attention forward (SDPA): FlagGems' flash_fwd_kernel (triton.autotune cache)"
    key_names = ("batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim", "causal")
    key_help = {"batch": "sequences", "heads": "query heads", "kv_heads": "key/value heads (fewer: GQA)",
                "q_len": "query positions per sequence", "kv_len": "key/value positions per sequence",
                "head_dim": "channels per head", "causal": "1: causal mask, 0: none"}
    dtypes = ("bf16", "fp16")
    devices = ("cuda",)
    source_modules = ("flag_gems.ops.flash_kernel",)

    # ---- keys -------------------------------------------------------------------------
    def parse_key(self, text: str) -> Key:
        parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
        names = ",".join(self.key_names)
        if len(parts) != len(self.key_names):
            raise KernelInputError(f"shape {text!r} for op attention needs 7 integers {names}")
        try:
            key = tuple(int(p) for p in parts)
        except ValueError:
            raise KernelInputError(f"shape {text!r} must be integers {names}") from None
        _, H, Hkv, Sq, Skv, D, causal = key
        if min(key[:6]) <= 0:
            raise KernelInputError(f"shape {text!r}: batch, heads, kv_heads, q_len, kv_len, head_dim must be positive")
        if causal not in (0, 1):
            raise KernelInputError(f"shape {text!r}: causal must be 0 or 1, not {causal}")
        if H % Hkv:
            raise KernelInputError(f"shape {text!r}: heads={H} is not a multiple of kv_heads={Hkv}")
        if D > FG_HEAD_DIMS[-1]:
            raise KernelInputError(f"shape {text!r}: FlagGems' flash attention takes head_dim <= {FG_HEAD_DIMS[-1]}")
        if causal and Sq > Skv:
            raise KernelInputError(f"shape {text!r}: causal attention needs q_len <= kv_len "
                                   "(the keys include the queries)")
        return key

    def presets(self) -> Mapping[str, list[Key]]:
        return {"minicpmo": list(MINICPMO)}

    def flops(self, key: Key) -> float:
        B, H, _, _, _, D, _ = key
        return 4.0 * B * H * D * attended_pairs(key)

    def bytes_per_set(self, key: Key, dtype: str) -> int:
        B, H, Hkv, Sq, Skv, D, _ = key
        return ELEM_BYTES[dtype] * D * (2 * B * Sq * H + 2 * B * Skv * Hkv)

    # ---- search space -------------------------------------------------------------------
    def space(self, key: Key, dtype: str, device: str) -> dict[str, tuple]:
        return dict(SPACE)

    def canonical(self, key: Key, config: Config) -> Config:
        """The space's four parameters as ints: anything else (FlagGems' PRE_LOAD_V, which its
        heuristic overwrites) does not change the program."""
        return {k: int(config[k]) for k in CONFIG_KEYS}

    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        if device != "cuda":
            return NO_CPU
        if dtype not in self.dtypes:
            return f"FlagGems' flash attention runs {', '.join(self.dtypes)}, not {dtype}"
        bm, bn, warps, stages = (config[k] for k in CONFIG_KEYS)
        rows, _ = flaggems_rows(key)
        kv_len = key[4]
        if bm > max(FG_BLOCK, next_pow2(rows)):
            return f"BLOCK_M={bm} exceeds the padded query rows per head ({rows}): only masked rows"
        if bn > max(FG_BLOCK, next_pow2(kv_len)):
            return f"BLOCK_N={bn} exceeds the padded kv_len ({kv_len}): only masked columns"
        if key[6] and bn > bm:
            # seen on the H100: BLOCK_M=16, BLOCK_N=64 on causal prefill gives rel error 0.6-0.68
            # (FlagGems' own configs all have BLOCK_N <= BLOCK_M)
            return f"causal with BLOCK_N={bn} > BLOCK_M={bm}: FlagGems' kernel masks the diagonal wrongly"
        bk = next_pow2(padded_head_dim(key[5]))  # the heuristic's BLOCK_K
        # a lower bound: the pipeliner keeps stages-1 K and V tiles in flight (Q not counted),
        # so no runnable config is refused; the compiler reports the rest as out of resources
        smem = ELEM_BYTES[dtype] * 2 * bn * bk * max(1, stages - 1)
        limit = SMEM_BY_ARCH.get(arch, SMEM_DEFAULT)
        if smem > limit:
            return f"needs at least {smem} B of shared memory for {stages} stages, the limit is {limit}"
        if bm * bk > 256 * 32 * warps:  # FlagGems' own configs stay within it up to d=256
            return f"the fp32 {bm}x{bk} output accumulator alone needs > 256 registers per thread over {warps} warps"
        return None

    # ---- running ------------------------------------------------------------------------
    def make_inputs(self, key: Key, dtype: str, device: str, n_sets: int, seed: int) -> Inputs:
        """Each set: q, k, v (own random values) and the causal flag the reference needs."""
        import torch

        B, H, Hkv, Sq, Skv, D, causal = key
        dt = torch_dtype(dtype)
        g = torch.Generator(device=device).manual_seed(seed)
        sets, outs = [], []
        for _ in range(n_sets):
            q = torch.randn((B, Sq, H, D), generator=g, device=device, dtype=dt)
            k = torch.randn((B, Skv, Hkv, D), generator=g, device=device, dtype=dt)
            v = torch.randn((B, Skv, Hkv, D), generator=g, device=device, dtype=dt)
            sets.append((q, k, v, bool(causal)))
            outs.append(torch.empty((B, Sq, H, D), device=device, dtype=dt))
        return Inputs(sets=sets, outs=outs)

    def reference(self, args: tuple):
        q, k, v, causal = args
        return attention_reference(q, k, v, causal)

    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        """mha_fwd as served with `config` in flash_fwd_kernel, split-KV off (a key FlagGems
        sends to split-KV on this GPU is tuned as if it were not)."""
        if device != "cuda":
            raise KernelInputError(NO_CPU)
        return _fg_runner(key, config)

    def precompile(self, key: Key, config: Config, dtype: str, device: str) -> None:
        precompile_by_running(self, key, config, dtype, device)

    def baselines(self, key: Key, dtype: str, device: str) -> dict[str, Runner]:
        """native: torch's SDPA on its flash backend (FA2, what FlagGems replaces) where flash
        takes the key, else torch's own pick. native_<backend>: torch's own pick when it is not
        flash (cuDNN on an H100 with torch 2.11), i.e. what serving gets without FlagGems.
        untuned: FlagGems as served, its autotuner deciding on this key."""
        if device != "cuda":
            return {}
        flash = sdpa_backend(key, dtype, flash_only=True) == "flash"
        runners = {"native": _native_runner(key, flash_only=flash)}
        pick = sdpa_backend(key, dtype)
        if pick not in (None, "flash"):
            runners[f"native_{pick}"] = _native_runner(key, flash_only=False)
        runners["untuned"] = _untuned_runner(key, dtype)
        return runners

    def untuned_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """FlagGems' own list, its autotuner's choice for this key first (the untuned baseline
        has just made it, unless FlagGems ran split-KV)."""
        if device != "cuda":
            return []
        configs = flaggems_configs()
        chosen = autotuner().cache.get(runtime_key(padded_head_dim(key[5]), dtype))
        if chosen is not None:
            first = as_space_config(chosen)
            configs = [first] + [c for c in configs if c != first]
        return configs

    # ---- identity -----------------------------------------------------------------------
    def source_hash(self, config: Config | None = None) -> str:
        """sha256 of flag_gems/ops/flash_kernel.py: flash_fwd_kernel, the @triton.jit helpers it
        calls and the heuristics that set its other meta-parameters."""
        import hashlib
        import inspect

        return hashlib.sha256(inspect.getsource(op_module("flash_kernel")).encode()).hexdigest()
