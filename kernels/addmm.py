"""Tunable biased GEMM: FlagGems' `addmm_kernel` (what nn.Linear with a bias reaches under FlagGems).

Key (M, N, K, BT): out[M,N] = bias[N] + A[M,K] @ B[K,N], beta = alpha = 1 (nn.Linear's call);
BT=1 means B is the transpose of an N x K weight (nn.Linear's layout, the default), BT=0 a
K x N tensor. The bias is 1-D and broadcast over the rows, as F.linear passes it.

FlagGems 5.0.2 has one addmm kernel on every NVIDIA GPU (`flag_gems/ops/addmm.py`, no Hopper
module): a plain tiled GEMM under a LibTuner over 8 yaml configs (BLOCK_SIZE_M/N/K, num_warps,
num_stages; no GROUP_M, no pre_hook), key M, N, K with the align32 strategy plus the four tensor
dtypes. One variant, `fg_addmm`: that kernel launched with an explicit config, so a winner is
exactly one row of FlagGems' addmm cache. And tuner's own GEMMs with a bias epilogue
(kernels/own_variants.py): `persistent`, the persistent TMA GEMM (kernels/persistent_mm.py), on
keys whose rows TMA can read, `streamk` (kernels/streamk_mm.py) on the same keys, for the tiles
that leave a partial wave (qkv at M=512: the persistent kernel took 1.68x cuBLAS's time), and
`splitk` (kernels/triton_mm.py), for the decode keys whose few
output tiles leave most SMs idle (the q/k/v projections at M <= 64: FlagGems' addmm was 1.47-1.73x
cuBLAS's time there even tuned). Their tile sizes are the same BLOCK_SIZE_* dimensions, plus mm's
GROUP_M, persistent knobs, SPLIT_K and FUSED_REDUCE (split-K's partials summed in the same launch,
kernels/splitk_fused.py). In a search every variant runs only on an NVIDIA GPU: on
the CPU every config is invalid and the runner refuses.
"""

from __future__ import annotations

from collections.abc import Mapping

from kernels.base import Config, Coverage, Inputs, KernelInputError, Key, Runner, torch_dtype
from kernels.flaggems_ops import libtuner, op_module  # noqa: F401 (libtuner: re-exported)
from kernels.mm import MM, vllm_shard_keys
from kernels.own_variants import OWN_SPACE_MODULES, PERSISTENT, SPLITK, STREAMK, WithOwnGemms, own_space
from tuner.devices import ELEM_BYTES

VARIANT = "fg_addmm"
OWN_VARIANTS = (PERSISTENT, STREAMK, SPLITK)
OWN_SPACE = own_space(group=True, variants=OWN_VARIANTS)
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "num_warps", "num_stages")
SPACE: dict[str, tuple] = {
    "BLOCK_SIZE_M": (16, 32, 64, 128, 256),
    "BLOCK_SIZE_N": (32, 64, 128, 256),
    "BLOCK_SIZE_K": (32, 64, 128, 256),
    "num_warps": (2, 4, 8),
    "num_stages": (2, 3, 4, 5),
}
# FlagGems' list (runtime/backend/_nvidia/tune_configs.yaml) goes up to these blocks for every
# key: its untuned pick must stay reachable, so smaller keys do not cap the blocks below them
FG_MAX_BLOCK_M = 128
FG_MAX_BLOCK_N = 256
FG_MAX_BLOCK_K = 64
NO_CPU = ("addmm has no CPU implementation: it runs FlagGems' Triton addmm kernel, which needs "
          "an NVIDIA GPU (use --device cuda)")

# MiniCPM-o 2.6 Linear layers with a bias, (N, K) (shared/facts/minicpmo-2.6.md)
LLM_NK = {"q": (3584, 3584), "kv": (512, 3584)}  # Qwen2 q/k/v, unfused as transformers runs them
LLM_M = (1, 16, 64, 512, 2048)
VISION_M = 10240  # SigLIP over the image slices of one request (the profile's M)
VISION_NK = {"qkv_out": (1152, 1152), "fc1": (4304, 1152), "fc2": (1152, 4304)}
AUDIO_M = 1500  # Whisper-medium encoder positions of 30 s of audio; the projector runs at it too
AUDIO_NK = {"qkv_out": (1024, 1024), "fc1": (4096, 1024), "fc2": (1024, 4096), "proj1": (3584, 1024)}
RESAMPLER_M, RESAMPLER_NK = 640, (3584, 3584)  # its attention's out_proj over 10 slices x 64 queries


def flag_gems_addmm_module():
    """FlagGems' addmm module as loaded (its LibTuner cache lives in that module object)."""
    return op_module("addmm")


def as_config(cfg) -> Config:
    """A triton.Config of FlagGems' addmm list as a config of this space."""
    return AddMM().as_config(cfg)


COVERAGE = Coverage(aten_ops={"aten::addmm": "addmm"}, flaggems_op="addmm", profile_keys=True,
                    injectors=("addmm_flaggems", "gemm_routes"))


def mm_config(config: Config) -> Config:
    """An addmm config as the mm config of the kernel it runs (the persistent kernel's names)."""
    return AddMM().mm_config(config)


class AddMM(WithOwnGemms):
    name = "addmm"
    description = "biased GEMM bias + A @ B (aten::addmm, nn.Linear with bias): FlagGems' addmm + own GEMMs"
    key_names = ("M", "N", "K", "BT")
    key_help = {"M": "rows of A: tokens in the batch", "N": "output features (the bias has N)",
                "K": "input features (the inner dimension)",
                "BT": "1: B is an N x K weight transposed (nn.Linear with bias); 0: B stored K x N"}
    source_modules = ("flag_gems.ops.addmm", "kernels.persistent_mm", "kernels.persistent_host_mm",
                      "kernels.streamk_mm", "kernels.triton_mm", "kernels.splitk_fused", *OWN_SPACE_MODULES)
    fg_op, fg_kernel, variant = "addmm", "addmm_kernel", VARIANT
    config_keys, config_space = CONFIG_KEYS, SPACE
    fg_max_tile = (FG_MAX_BLOCK_M, FG_MAX_BLOCK_N, FG_MAX_BLOCK_K)
    no_cpu = NO_CPU
    own_variants = OWN_VARIANTS
    own_space = OWN_SPACE

    def own_runner(self, mm_cfg: Config) -> Runner:
        if mm_cfg["variant"] == STREAMK:
            from kernels.streamk_mm import streamk_mm

            return lambda args, out: streamk_mm(args[1], args[2], mm_cfg, out=out, bias=args[0])
        if mm_cfg["variant"] == SPLITK:
            from kernels.triton_mm import splitk_mm

            return lambda args, out: splitk_mm(args[1], args[2], mm_cfg, out=out, bias=args[0])
        from kernels.persistent_mm import persistent_mm

        return lambda args, out: persistent_mm(args[1], args[2], mm_cfg, out=out, bias=args[0])

    # ---- keys -------------------------------------------------------------------------
    def parse_key(self, text: str) -> Key:
        """M,N,K with an optional weight layout, exactly as for mm ('nk' default, or 'kn')."""
        try:
            return MM.parse_key(self, text)
        except KernelInputError as e:
            raise KernelInputError(str(e).replace("op mm", "op addmm")) from None

    def presets(self) -> Mapping[str, list[Key]]:
        llm = [(m, n, k, 1) for (n, k) in LLM_NK.values() for m in LLM_M]
        vision = [(VISION_M, n, k, 1) for (n, k) in VISION_NK.values()]
        audio = [(AUDIO_M, n, k, 1) for (n, k) in AUDIO_NK.values()]
        vllm = {f"vllm-tp{tp}": vllm_shard_keys(tp, ("qkv",)) for tp in (1, 2, 4, 8)}  # fused q/k/v with bias
        resampler = [(RESAMPLER_M, *RESAMPLER_NK, 1)]
        return {"minicpmo": llm + vision + resampler + audio, "minicpmo-llm": llm, "minicpmo-vision": vision,
                "minicpmo-resampler": resampler, "minicpmo-audio": audio, **vllm}

    def flops(self, key: Key) -> float:
        M, N, K, _ = key
        return 2.0 * M * N * K

    def bytes_per_set(self, key: Key, dtype: str) -> int:
        M, N, K, _ = key
        return (M * K + K * N + M * N + N) * ELEM_BYTES[dtype]

    def mnk(self, key: Key) -> tuple[int, int, int]:
        return key[:3]

    # ---- running ------------------------------------------------------------------------
    def make_inputs(self, key: Key, dtype: str, device: str, n_sets: int, seed: int) -> Inputs:
        """mm's A and B (B = W.t() for BT=1) plus a 1-D bias of N per set, in addmm's order."""
        import torch

        mm = MM.make_inputs(self, key, dtype, device, n_sets, seed)
        g = torch.Generator(device=device).manual_seed(seed + 1)
        sets = [(torch.randn((key[1],), generator=g, device=device, dtype=torch_dtype(dtype)), a, b)
                for a, b in mm.sets]
        return Inputs(sets=sets, outs=mm.outs)

    def reference(self, args: tuple):
        """mm's reference (fp32 without TF32 on the GPU, fp64 on the CPU) plus the bias."""
        bias, a, b = args
        ref = MM.reference(self, (a, b))
        return ref.add_(bias.to(ref.dtype))

    def launcher(self, jit, config: Config) -> Runner:
        return _fg_addmm_runner(jit, config)

    def native_runner(self) -> Runner:
        import torch

        return lambda args, out: torch.addmm(args[0], args[1], args[2], out=out)

    def untuned_runner(self, fg) -> Runner:
        return lambda args, out: fg.addmm_out(args[0], args[1], args[2], out=out)


def _fg_addmm_runner(jit, config: Config) -> Runner:
    """FlagGems' addmm_out body with the LibTuner bypassed: its JIT function `jit`, one config."""
    import triton

    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]

    def run(args, out):
        bias, a, b = args
        M, K = a.shape
        N = b.shape[1]
        a = a.contiguous()
        bias = bias.broadcast_to(out.shape)
        grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
        jit[grid](
            a, b, bias, out, 1, 1, M, N, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            bias.stride(0), bias.stride(1), out.stride(0), out.stride(1),
            BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
        return out

    return run
