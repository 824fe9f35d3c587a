"""tuner's own GEMMs as more variants of a FlagGems LibTuner op (addmm, bmm): the persistent TMA
GEMM (kernels/persistent_mm.py, persistent_bmm.py), the stream-K GEMM (kernels/streamk_mm.py) and
the split-K GEMM (kernels/triton_mm.py).

Such an op's space names its tiles after FlagGems' kernel (BLOCK_SIZE_M..., TILE_M...); an own
variant reuses those three dimensions plus its own (`own_space`: GROUP_M, the persistent knobs,
SPLIT_K and FUSED_REDUCE) and is judged, canonicalised and warm-started as mm's variant of the same name on the
key's (M, N, K): one set of constraints for every op that runs the kernel. A knob a variant does
not take is pinned in its configs (OCCUPANCY for split-K, SPLIT_K for persistent, all of them for
FlagGems' kernel), so configs that run the same program compare equal.

Both own kernels run only on the GPU in a search (on the CPU the op keeps FlagGems' GPU-only
space); their runners work under TRITON_INTERPRET=1, which the CPU tests use.
"""

from __future__ import annotations

from kernels.base import Config, Kernel, Key, Runner, jit_source_hash
from kernels.flaggems_ops import LibTunerKernel
from kernels.mm import (KNOBS, MM, OWN_MODULES, PERSISTENT_PARAMS, PERSISTENT_PINNED, SPLIT_PARAMS, SPLIT_PINNED,
                        TILE_SPACE, TMA_VARIANTS, held_knobs, mm_starts, tma_rows)
from kernels.mm import own_module as module_running

PERSISTENT, STREAMK, SPLITK = "persistent", "streamk", "splitk"
# where an own variant's space, constraints and warm starts are written: part of every such op's
# study identity (source_modules), so a search after an edit there starts afresh
OWN_SPACE_MODULES = ("kernels.own_variants", "kernels.mm")


class WithOwnGemms(LibTunerKernel):
    """A LibTunerKernel that also searches tuner's own GEMMs. A subclass lists `own_variants`
    (persistent and stream-K only where TMA can read the key's rows), gives `own_space`
    (`own_space()` below) and `own_runner`."""

    own_variants: tuple[str, ...] = (PERSISTENT,)
    own_space: dict[str, tuple] = {}
    own_module = OWN_MODULES[PERSISTENT]  # the persistent kernel's module (bmm: persistent_bmm)

    def own_runner(self, mm_cfg: Config) -> Runner:
        """The own kernel of mm_cfg["variant"] run with `mm_cfg` (mm's names) on this op's (args, out)."""
        raise NotImplementedError

    # ---- names ------------------------------------------------------------------------
    def mm_config(self, config: Config) -> Config:
        """An own variant's config as mm's config of the kernel it runs (BLOCK_M..., knobs not in
        own_space pinned; SPLIT_K 1 and FUSED_REDUCE 0 but for split-K)."""
        tiles = self.config_keys[:3]
        keys = ("variant", "GROUP_M", "num_warps", "num_stages", *self.own_space)
        c = {**PERSISTENT_PINNED, **{k: config[k] for k in keys if k in config}}  # older records lack knobs
        split = {"SPLIT_K": c.get("SPLIT_K", 1)} if c.get("variant") == SPLITK else dict(SPLIT_PINNED)
        return c | {f"BLOCK_{d}": config[t] for d, t in zip("MNK", tiles)} | split

    def _mm_key(self, key: Key) -> Key:
        return (*self.mnk(key), 1)

    def _pinned(self) -> dict:
        return {k: 8 if k == "GROUP_M" else {**PERSISTENT_PINNED, **SPLIT_PINNED}[k] for k in self.own_space}

    def _own_for(self, key: Key, dtype: str, device: str) -> tuple[str, ...]:
        """The own variants that serve this key in a search on `device`."""
        if device != "cuda":
            return ()
        return tuple(v for v in self.own_variants if v not in TMA_VARIANTS or tma_rows(self._mm_key(key), dtype))

    # ---- search space -------------------------------------------------------------------
    def space(self, key: Key, dtype: str, device: str) -> dict[str, tuple]:
        own = self._own_for(key, dtype, device)
        if not own:
            return super().space(key, dtype, device)
        knobs = {k: v for k, v in self.own_space.items() if k == "GROUP_M" or any(k in KNOBS[v] for v in own)}
        return {"variant": (self.variant, *own), **self.config_space, **knobs}

    def grid_spaces(self, key: Key, dtype: str, device: str) -> list[dict[str, tuple]]:
        """One part per variant: FlagGems' kernel with every own knob at its pinned value, each own
        variant with the knobs it does not take held (mm's rule)."""
        space = self.space(key, dtype, device)
        fg = dict(space, variant=(self.variant,)) | {k: (v,) for k, v in self._pinned().items() if k in space}
        return [fg, *(held_knobs(space, v) for v in space["variant"] if v != self.variant)]

    def canonical(self, key: Key, config: Config) -> Config:
        if config["variant"] not in self.own_variants:
            base = super().canonical(key, config)
            return base | {k: v for k, v in self._pinned().items() if k in config}
        mm = MM().canonical(self._mm_key(key), self.mm_config(config))  # GROUP_M=1 where one row of tiles
        # a persistent or stream-K record stored before a knob existed gets its pinned value, as
        # mm_config reads it
        tma = config["variant"] in TMA_VARIANTS
        own = [k for k in self.own_space if k in config or (tma and k not in SPLIT_PARAMS)]
        return {k: config[k] for k in ("variant", *self.config_keys)} | {k: mm[k] for k in own}

    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        if config["variant"] not in self.own_variants:
            return super().invalid_reason(key, config, dtype, device, arch)
        if device != "cuda":
            return self.no_cpu
        return MM().invalid_reason(self._mm_key(key), self.mm_config(config), dtype, device, arch)

    def starting_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """mm's warm starts of each own variant in this space, in this op's names (invalid ones are
        dropped when queued)."""
        space = self.space(key, dtype, device)
        out = []
        for c in mm_starts(space, self._mm_key(key)[0]):  # its knobs already pinned where the space has them
            cfg = {"variant": c["variant"], "num_warps": c["num_warps"], "num_stages": c["num_stages"]}
            cfg |= {t: c[f"BLOCK_{d}"] for d, t in zip("MNK", self.config_keys[:3])}
            out.append(self.canonical(key, cfg | {k: c[k] for k in ("GROUP_M", *self.own_space) if k in c and k in space}))
        return out

    # ---- running ------------------------------------------------------------------------
    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        if config["variant"] not in self.own_variants or device != "cuda":
            return super().runner(key, config, dtype, device)
        return self.own_runner(self.mm_config(config))

    def source_hash(self, config: Config | None = None) -> str:
        if config is None:
            # a study's identity (search.study_name_for): every module of the op, as mm's is. Hashing
            # FlagGems' function alone resumed session 7's addmm studies after FUSED_REDUCE joined
            # the space (session 9, H200: 0 new trials at qkv M=8 and 32; the knob never tried)
            return Kernel.source_hash(self)
        variant = config.get("variant")
        if variant in self.own_variants:
            if variant == PERSISTENT and self.own_module != OWN_MODULES[PERSISTENT]:
                return jit_source_hash(self.own_module)  # bmm: its batched kernel
            # split-K's and the persistent kernel's knobs have mm's names in every op's space
            return jit_source_hash(module_running(config))
        return super().source_hash(config)


def own_space(*, group: bool, variants: tuple[str, ...], lacks: tuple[str, ...] = ()) -> dict[str, tuple]:
    """The own knobs an op's kernels take: GROUP_M where FlagGems' space has none, and the knobs
    of each own variant (mm's KNOBS: the persistent kernels', split-K's SPLIT_K and FUSED_REDUCE)
    but those the op's kernels lack (the batched persistent kernel: no subtiled epilogue, no
    host-descriptor form)."""
    takes = {k for v in variants for k in KNOBS.get(v, ())} - set(lacks)
    knobs = {k: v for k, v in {**PERSISTENT_PARAMS, **SPLIT_PARAMS}.items() if k in takes}
    return ({"GROUP_M": TILE_SPACE["GROUP_M"]} if group else {}) | knobs
