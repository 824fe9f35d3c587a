"""The injectors: what the serve-time plugin runs to put tuned configs to use.

An injector takes the runtime folder's records and makes one engine or library use them (vLLM's
MoE config files, a FlagGems cache, an aten override), returning how many records now steer a
kernel. Each is a function beside the code it drives, registered with `@injector` (as FlagGems'
`LibTuner.register_strategy` registers its key strategies). MODULES lists the modules holding
them, one line each: the plugin runs the injectors stage by stage (STAGES), in MODULES order
within a stage, and its log line counts them in MODULES order. A kernel module's COVERAGE names
its injectors. Importing this module imports neither torch, flag_gems nor vllm.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Under "vllm." so the plugin's lines go through the handler vLLM installs on its logger tree.
LOGGER = "vllm.tuner"

ENGINE = "engine"      # before FlagGems is touched
FLAGGEMS = "flaggems"  # with FlagGems enabled only, after flag_gems.enable(); its config memo follows
OVERRIDE = "override"  # last, over whatever FlagGems registered
STAGES = (ENGINE, FLAGGEMS, OVERRIDE)

MODULES = (
    "tuner.inject.vllm_moe",        # fused_moe: vLLM's config files
    "tuner.inject.flaggems_cache",  # mm: FlagGems' mm LibTuner cache
    "tuner.inject.flaggems_addmm",  # addmm: FlagGems' addmm LibTuner cache
    "tuner.inject.flaggems_bmm",    # bmm: FlagGems' bmm LibTuner cache
    "tuner.inject.attention_cache",  # attention: FlagGems' flash-attention autotuner
    "tuner.inject.flaggems_moe",    # fused_moe under FlagGems: its MoE config lookup
    "tuner.inject.gemm_router",     # mm, addmm: each key to tuned FlagGems, split-K or native
)


@dataclass(frozen=True)
class Context:
    """What every injector may read: the runtime folder's state (tuner.inject.plugin)."""

    folder: Path
    exclude: list[str]  # FlagGems ops left disabled
    max_tokens: int
    allow_foreign: bool
    enable_flaggems: bool
    moe_dir: Path
    log: logging.Logger  # the plugin's logger: warnings reach the engine's log
    # "all": FlagGems registers every op but the excluded and claimed ones; "routed": it registers no
    # aten op and only the GEMM router's routes reach its kernels (tuned serving in a compiling engine)
    flaggems_ops: str = "all"
    # a GEMM key runs its tuned kernel where that was timed faster than cuBLAS times this (1.0: faster)
    route_within: float = 1.0


Apply = Callable[[list[dict[str, Any]], Context], int]
Claims = Callable[[list[dict[str, Any]], Context], list[str]]


@dataclass(frozen=True)
class Injector:
    name: str  # its key in apply_state's counts
    label: str | None  # "<label> <count>" in the plugin's log line; None: not counted (a hook)
    stage: str
    apply: Apply
    claims: Claims | None  # FlagGems ops it takes over: flag_gems.enable does not register them
    module: str


_INJECTORS: dict[str, Injector] = {}


def injector(name: str, *, label: str | None, stage: str, claims: Claims | None = None) -> Callable[[Apply], Apply]:
    """Register the decorated `fn(records, context) -> count` as the injector `name`."""
    if stage not in STAGES:
        raise ValueError(f"injector {name!r}: unknown stage {stage!r}; use one of {', '.join(STAGES)}")

    def register(fn: Apply) -> Apply:
        if fn.__module__ not in MODULES:
            raise ValueError(f"injector {name!r} is defined in {fn.__module__}, which MODULES does not list")
        known = _INJECTORS.get(name)
        if known is not None and (known.module, known.apply.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"injector {name!r} is registered twice: {known.module} and {fn.__module__}")
        _INJECTORS[name] = Injector(name, label, stage, fn, claims, fn.__module__)
        return fn

    return register


def injectors(stage: str | None = None) -> list[Injector]:
    """Every registered injector (of one stage if given), in MODULES order."""
    for module in MODULES:
        importlib.import_module(module)
    ordered = sorted(_INJECTORS.values(), key=lambda i: MODULES.index(i.module))
    return [i for i in ordered if stage is None or i.stage == stage]


def counted() -> list[Injector]:
    """The injectors whose counts the plugin's log line shows, in its order."""
    return [i for i in injectors() if i.label is not None]
