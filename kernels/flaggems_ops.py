"""Shared by the kernel modules that run one of FlagGems' LibTuner kernels with an explicit config
(addmm, bmm: `LibTunerKernel`): loading the op module, reaching its LibTuner and JIT function, and
the tile limits of a plain tiled GEMM. Nothing here imports flag_gems at module import time (it
cannot import without a GPU)."""

from __future__ import annotations

from abc import abstractmethod

from kernels.base import Config, Kernel, KernelInputError, Key, Runner, next_pow2, precompile_by_running


def op_module(name: str):
    """FlagGems' `flag_gems.ops.<name>` as loaded (importing it imports flag_gems first): its
    LibTuner / autotuner caches live in that module object, so it is the one to read and seed."""
    import importlib

    return importlib.import_module(f"flag_gems.ops.{name}")


def jit_function(obj):
    """Unwrap LibEntry / LibTuner down to the plain JITFunction, to run one chosen config."""
    from triton.runtime.jit import JITFunction

    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj


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


class LibTunerKernel(Kernel):
    """One FlagGems LibTuner kernel launched with an explicit config, so that a winner is exactly
    one row of FlagGems' cache for that kernel. One variant (that kernel); GPU only (FlagGems does
    not import under TRITON_INTERPRET=1): on the CPU every config is invalid and the runner refuses.
    Baselines: native = torch's op, untuned = FlagGems' op through its own LibTuner, whose pick for
    the key is the warm start.

    A subclass names FlagGems' module and JIT kernel, the variant, the config keys (its three tile
    sizes first, num_warps and num_stages last), FlagGems' largest tile and the NO_CPU sentence, and
    gives the keys (parsing, presets, inputs, reference), the launch and the two baselines.
    """

    devices = ("cuda",)
    fg_op: str = ""  # flag_gems.ops.<fg_op>
    fg_kernel: str = ""  # its LibEntry-wrapped kernel, e.g. "addmm_kernel"
    variant: str = ""
    config_keys: tuple[str, ...] = ()
    config_space: dict[str, tuple] = {}
    # a block may exceed the padded dimension up to FlagGems' largest: its untuned pick stays reachable
    fg_max_tile: tuple[int, int, int] = (0, 0, 0)
    no_cpu: str = ""

    # ---- what differs ----------------------------------------------------------------------
    @abstractmethod
    def mnk(self, key: Key) -> tuple[int, int, int]:
        """The GEMM's M, N, K in `key` (what a tile is judged against)."""

    def key_invalid_reason(self, key: Key) -> str | None:
        """Why `key` itself cannot run (checked after the device and the variant), or None."""
        return None

    @abstractmethod
    def launcher(self, jit, config: Config) -> Runner:
        """FlagGems' op body with the LibTuner bypassed: the JIT function `jit`, one config."""

    @abstractmethod
    def native_runner(self) -> Runner:
        """torch's op writing into the output buffer."""

    @abstractmethod
    def untuned_runner(self, fg) -> Runner:
        """FlagGems' op of module `fg` through its own LibTuner, into the output buffer."""

    # ---- FlagGems' kernel ------------------------------------------------------------------
    def fg_module(self):
        """FlagGems' op module as loaded (its LibTuner cache lives in that module object)."""
        return op_module(self.fg_op)

    def fg_entry(self):
        return getattr(self.fg_module(), self.fg_kernel)

    def as_config(self, cfg) -> Config:
        """A triton.Config of FlagGems' list as a config of this space."""
        kw = cfg.kwargs
        return {"variant": self.variant, **{k: int(kw[k]) for k in self.config_keys[:-2]},
                "num_warps": int(cfg.num_warps), "num_stages": int(cfg.num_stages)}

    # ---- search space -------------------------------------------------------------------
    def space(self, key: Key, dtype: str, device: str) -> dict[str, tuple]:
        return {"variant": (self.variant,), **self.config_space}

    def canonical(self, key: Key, config: Config) -> Config:
        return {k: config[k] for k in ("variant", *self.config_keys)}

    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        if device != "cuda":
            return self.no_cpu
        if config["variant"] != self.variant:
            return f"variant {config['variant']} is not {self.variant}"
        reason = self.key_invalid_reason(key)
        if reason is not None:
            return reason
        names = self.config_keys[:3]
        return tile_invalid_reason(self.mnk(key), tuple(config[k] for k in names), config["num_warps"],
                                   config["num_stages"], self.fg_max_tile, names, dtype, device, arch)

    # ---- running ------------------------------------------------------------------------
    def source_hash(self, config: Config | None = None) -> str:
        """sha256 of FlagGems' JIT function source (what a record's config runs)."""
        import hashlib

        if (config or {}).get("variant", self.variant) != self.variant:
            raise KernelInputError(f"unknown {self.name} variant {config['variant']!r}")
        return hashlib.sha256(jit_function(self.fg_entry()).src.encode()).hexdigest()

    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        if device != "cuda":
            raise KernelInputError(self.no_cpu)
        if config["variant"] != self.variant:
            raise KernelInputError(f"unknown {self.name} variant {config['variant']!r}")
        return self.launcher(jit_function(self.fg_entry()), config)

    def precompile(self, key: Key, config: Config, dtype: str, device: str) -> None:
        precompile_by_running(self, key, config, dtype, device)

    def baselines(self, key: Key, dtype: str, device: str) -> dict[str, Runner]:
        runners: dict[str, Runner] = {"native": self.native_runner()}
        if device == "cuda":
            runners["untuned"] = self.untuned_runner(self.fg_module())
        return runners

    def untuned_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """The config FlagGems' own LibTuner chose for this key (its last call)."""
        cfg = last_pick(self.fg_entry()) if device == "cuda" else None
        return [] if cfg is None else [self.as_config(cfg)]
