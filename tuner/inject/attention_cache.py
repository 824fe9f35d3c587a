"""Seed FlagGems' flash-attention autotuner with tuned configs so nothing benchmarks at serve time.

`flash_fwd_kernel` (flag_gems/ops/flash_kernel.py) is a LibEntry around a plain triton.autotune
with key ["d", "is_dropout"]: its choices live in the in-memory dict `Autotuner.cache` (no LibTuner
table, no disk cache), and a present key is never benchmarked. Triton 3.x's Autotuner.run builds
the key from the key arguments' values and str(dtype) of every tensor argument
(kernels.attention.runtime_key), so it holds only the padded head dim and the dtype: every shape
with that head dim gets one config. Rule: per (padded head dim, dtype) the record with the most
attention work per call (batch x heads x attended (query, key) pairs) wins, the shape where the
kernel spends the most time per call (MiniCPM-o: the 2048-token LLM prefill for d=128, the vision
encoder for d=96, Whisper for d=64).

Seed before the first attention call; LibEntry's compiled-kernel cache (which skips the autotuner
once filled) is cleared after seeding anyway.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from tuner.inject.foreign import ENV_FIELDS, check_records, running_environment
from tuner.inject.registry import FLAGGEMS, Context, injector

logger = logging.getLogger(__name__)

KERNEL = "attention"
DTYPES = ("bf16", "fp16")


def _key_tuple(rec: Mapping[str, Any]) -> tuple[int, ...]:
    from kernels.attention import Attention

    return tuple(int(rec["key"][n]) for n in Attention.key_names)


def select_records(records: Iterable[Mapping[str, Any]]) -> dict[tuple[int, str], Mapping[str, Any]]:
    """(padded head dim, dtype) -> the attention record with the most work per call (ties: the
    larger key tuple, so the choice does not depend on record order)."""
    from kernels.attention import attended_pairs, padded_head_dim

    def work(rec) -> tuple:
        key = _key_tuple(rec)
        return key[0] * key[1] * attended_pairs(key), key

    best: dict[tuple[int, str], Mapping[str, Any]] = {}
    for rec in records:
        if rec.get("kernel") != KERNEL or rec.get("dtype") not in DTYPES:
            continue
        slot = (padded_head_dim(_key_tuple(rec)[5]), rec["dtype"])
        if slot not in best or work(rec) > work(best[slot]):
            best[slot] = rec
    return best


def seed_attention_cache(
    records: Iterable[Mapping[str, Any]],
    allow_foreign: bool = False,
    *,
    running: Mapping[str, Any] | None = None,
) -> int:
    """Put each selected record's config into flash_fwd_kernel's Autotuner.cache under the key
    FlagGems' mha_fwd call produces; return how many keys were seeded. Foreign records (other
    GPU / Triton / FlagGems / flash_kernel.py source) raise ForeignResultError unless
    allow_foreign, which warns loudly instead."""
    from kernels.attention import (
        Attention,
        autotuner,
        clear_compiled,
        runtime_key,
        triton_config,
    )

    recs = [r for r in records if r.get("kernel") == KERNEL]
    if not recs:
        return 0
    base = dict(running if running is not None else running_environment(ENV_FIELDS))
    base.setdefault("kernel_source_hash", Attention().source_hash())
    check_records(recs, base, allow_foreign=allow_foreign)
    tuner = autotuner()
    chosen = select_records(recs)
    for (d, dtype), rec in sorted(chosen.items()):
        tuner.cache[runtime_key(d, dtype)] = triton_config(rec["config"])
        logger.debug("attention d=%d %s seeded from %s: %s", d, dtype, rec["key"], rec["config"])
    if chosen:
        clear_compiled()
    return len(chosen)


@injector("attention_flaggems", label="attention via FlagGems autotuner", stage=FLAGGEMS)
def seed_attention_for_serving(records: list[dict[str, Any]], ctx: Context) -> int:
    """FlagGems' flash_fwd_kernel is reached when torch or the engine picks FlagGems' flash
    attention (on an H100 torch's SDPA prefers cuDNN): one config per head dim and dtype."""
    return seed_attention_cache(records, allow_foreign=ctx.allow_foreign)
