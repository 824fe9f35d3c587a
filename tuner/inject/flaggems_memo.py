"""An in-memory layer over FlagGems' LibTuner config cache, for serving.

FlagGems 5.0.x keeps no in-memory copy of its tuned configs: every call of every LibTuner
kernel (mm, addmm, bmm, ...) asks its SQL ConfigCache twice (`key in cache`, then
`cache[key]`), each a SQLAlchemy session. On the H100 host that made an eager 512-token
prefill of the MiniCPM-o LLM 6-9x slower than native while the GPU idled (results/e2e).
A key's best config does not change while a server runs, so hits are kept in a dict keyed by
(table, key); misses still go to SQL (a row another process wrote is found) and writes go
through to SQL and into the dict.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

_installed: Callable[[], None] | None = None


def install_config_memo() -> Callable[[], None]:
    """Patch FlagGems' ConfigCache.get/set (once per process); returns the undo function."""
    global _installed
    if _installed is not None:
        return _installed
    cls = importlib.import_module("flag_gems.utils.libentry").ConfigCache
    original_get, original_set = cls.get, cls.set
    memo: dict[tuple, object] = {}

    def get(self, key):
        hit = memo.get((self.table_name, key))
        if hit is None:
            hit = original_get(self, key)
            if hit is not None:
                memo[self.table_name, key] = hit
        return hit

    def set_(self, key, config):
        original_set(self, key, config)
        memo[self.table_name, key] = config

    def undo() -> None:
        global _installed
        cls.get, cls.set = original_get, original_set
        memo.clear()
        _installed = None

    cls.get, cls.set = get, set_
    _installed = undo
    return undo
