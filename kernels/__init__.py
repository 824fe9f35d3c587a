"""Tunable kernels, one module per op. Registering a module here is all `tuner tune --op` needs;
its `COVERAGE` (kernels.base.Coverage) tells the profiler, `serve` and the plugin what it covers."""

from __future__ import annotations

import importlib

from kernels.base import Coverage, Kernel, KernelInputError

# op name -> "module:ClassName"; imported lazily so listing ops never imports torch/flag_gems
REGISTRY: dict[str, str] = {
    "mm": "kernels.mm:MM",
    "vllm_fused_moe": "kernels.vllm_fused_moe:VllmFusedMoE",  # before fused_moe: vLLM's MoE rows are its
    "fused_moe": "kernels.fused_moe:FusedMoE",
    "attention": "kernels.attention:Attention",
    "addmm": "kernels.addmm:AddMM",
    "bmm": "kernels.bmm:BMM",
    "scaled_mm": "kernels.scaled_mm:ScaledMM",
}


class UnknownOp(KernelInputError):
    pass


def get_kernel(ref: str) -> Kernel:
    """A kernel by op name, or by 'module:Class' (how the worker process is told which one)."""
    spec = REGISTRY.get(ref, ref if ":" in ref else None)
    if spec is None:
        raise UnknownOp(f"unknown op {ref!r}; tunable ops: {', '.join(sorted(REGISTRY))}")
    module, _, cls = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)()
    except (ImportError, AttributeError) as e:
        raise UnknownOp(f"cannot load kernel {spec!r}: {e}") from None


def coverage(op: str | None) -> Coverage | None:
    """What a registered op covers (its module's COVERAGE); None for a name not in REGISTRY.
    Imports the op's kernel module only, which imports neither torch nor flag_gems."""
    spec = REGISTRY.get(op) if isinstance(op, str) else None
    if spec is None:
        return None
    return importlib.import_module(spec.partition(":")[0]).COVERAGE


def coverages() -> dict[str, Coverage]:
    """Every registered op's declaration, in REGISTRY order."""
    return {op: coverage(op) for op in REGISTRY}


def kernel_ref(kernel: Kernel) -> str:
    return f"{type(kernel).__module__}:{type(kernel).__name__}"


__all__ = ["REGISTRY", "Coverage", "Kernel", "KernelInputError", "UnknownOp", "coverage", "coverages", "get_kernel",
           "kernel_ref"]
