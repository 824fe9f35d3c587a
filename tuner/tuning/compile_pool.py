"""Compiling upcoming candidates in helper processes while the worker times the current one.

Compilation is CPU work; Triton's on-disk cache hands the binary to the worker. A compile that
fails is reported as the candidate's failure without spending worker time on it.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from kernels.base import Config, Key


def _precompile(kernel_ref: str, key: Key, dtype: str, device: str, config: Config) -> str | None:
    from kernels import get_kernel

    try:
        get_kernel(kernel_ref).precompile(key, config, dtype, device)
        return None
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return f"compile: {type(e).__name__}: {first}"


class CompilePool:
    """`workers=0` compiles nothing ahead (the worker compiles on first use)."""

    def __init__(self, kernel_ref: str, device: str, workers: int):
        self.kernel_ref, self.device, self.workers = kernel_ref, device, workers
        self._pool: ProcessPoolExecutor | None = None

    def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        return self._pool

    def submit(self, key: Key, dtype: str, config: Config) -> Future | None:
        if self.workers <= 0 or self.device != "cuda":
            return None
        try:
            return self._ensure().submit(_precompile, self.kernel_ref, key, dtype, self.device, config)
        except BrokenProcessPool:
            self._pool = None
            return self._ensure().submit(_precompile, self.kernel_ref, key, dtype, self.device, config)

    @staticmethod
    def result(future: Future | None) -> str | None:
        """None when compiled (or nothing to do), else why the compile failed."""
        if future is None:
            return None
        try:
            return future.result()
        except BrokenProcessPool:
            return None  # a compile process died: let the worker compile it and judge
        except Exception as e:
            return f"compile: {type(e).__name__}: {e}"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
