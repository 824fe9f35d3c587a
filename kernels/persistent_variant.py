"""tuner's persistent TMA GEMM as a second variant of a FlagGems LibTuner op (addmm, bmm).

Such an op's space names its tiles after FlagGems' kernel (BLOCK_SIZE_M..., TILE_M...); the
persistent variant reuses those three dimensions plus its own (`own_space`: GROUP_M and the
persistent knobs), and is judged, canonicalised and warm-started as mm's persistent variant on the
key's (M, N, K): one set of constraints for every op that runs the kernel. FlagGems' variant has
the own knobs pinned (absent from its configs' meaning), so its configs stay distinct.
"""

from __future__ import annotations

from kernels.base import Config, Key, Runner, jit_source_hash
from kernels.flaggems_ops import LibTunerKernel
from kernels.mm import MM, PERSISTENT_PARAMS, PERSISTENT_PINNED, persistent_starts, tma_rows

PERSISTENT = "persistent"


class WithPersistent(LibTunerKernel):
    """A LibTunerKernel whose keys TMA can read also search tuner's persistent kernel. A subclass
    gives `own_space` (a subset of GROUP_M and mm's PERSISTENT_PARAMS) and `own_runner`."""

    own_space: dict[str, tuple] = {}
    own_module = "kernels.persistent_mm"  # its KERNEL_FUNCTIONS are the variant's identity

    def own_runner(self, mm_cfg: Config) -> Runner:
        """The persistent kernel run with `mm_cfg` (mm's names) on this op's (args, out)."""
        raise NotImplementedError

    # ---- names ------------------------------------------------------------------------
    def mm_config(self, config: Config) -> Config:
        """A persistent config as mm's config of the kernel it runs (BLOCK_M..., knobs not in
        own_space pinned)."""
        tiles = self.config_keys[:3]
        keys = ("variant", "GROUP_M", "num_warps", "num_stages", *self.own_space)
        c = {**PERSISTENT_PINNED, **{k: config[k] for k in keys if k in config}}  # older records lack knobs
        return c | {f"BLOCK_{d}": config[t] for d, t in zip("MNK", tiles)} | {"SPLIT_K": 1}

    def _mm_key(self, key: Key) -> Key:
        return (*self.mnk(key), 1)

    def _pinned(self) -> dict:
        return {k: 8 if k == "GROUP_M" else PERSISTENT_PINNED[k] for k in self.own_space}

    # ---- search space -------------------------------------------------------------------
    def space(self, key: Key, dtype: str, device: str) -> dict[str, tuple]:
        if device != "cuda" or not tma_rows(self._mm_key(key), dtype):
            return super().space(key, dtype, device)
        return {"variant": (self.variant, PERSISTENT), **self.config_space, **self.own_space}

    def canonical(self, key: Key, config: Config) -> Config:
        if config["variant"] != PERSISTENT:
            base = super().canonical(key, config)
            return base | {k: v for k, v in self._pinned().items() if k in config}
        mm = MM().canonical(self._mm_key(key), self.mm_config(config))  # GROUP_M=1 where one row of tiles
        return {k: config[k] for k in ("variant", *self.config_keys)} | {k: mm[k] for k in self.own_space}

    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        if config["variant"] != PERSISTENT:
            return super().invalid_reason(key, config, dtype, device, arch)
        if device != "cuda":
            return self.no_cpu
        return MM().invalid_reason(self._mm_key(key), self.mm_config(config), dtype, device, arch)

    def starting_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        if PERSISTENT not in self.space(key, dtype, device)["variant"]:
            return []
        out = []
        for c in persistent_starts(self.mnk(key)[0]):
            cfg = {"variant": PERSISTENT, **self._pinned(), "num_warps": c["num_warps"], "num_stages": c["num_stages"]}
            cfg |= {t: c[f"BLOCK_{d}"] for d, t in zip("MNK", self.config_keys[:3])}
            out.append(cfg | {k: c[k] for k in ("GROUP_M", *self.own_space) if k in c})
        return out

    # ---- running ------------------------------------------------------------------------
    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        if config["variant"] != PERSISTENT or device != "cuda":
            return super().runner(key, config, dtype, device)
        return self.own_runner(self.mm_config(config))

    def source_hash(self, config: Config | None = None) -> str:
        if (config or {}).get("variant") == PERSISTENT:
            return jit_source_hash(self.own_module)
        return super().source_hash(config)


def own_space(*, group: bool, subtile: bool) -> dict[str, tuple]:
    """The persistent knobs an op's kernel takes, with GROUP_M where FlagGems' space has none (the
    batched kernel has no subtiled epilogue)."""
    knobs = {k: v for k, v in PERSISTENT_PARAMS.items() if subtile or k != "EPILOGUE_SUBTILE"}
    return ({"GROUP_M": (1, 4, 8, 16)} if group else {}) | knobs
