"""Compiling upcoming candidates in helper processes while the worker times the current one.

Compilation is CPU work; Triton's on-disk cache hands the binary to the worker. A compile that
fails is reported as the candidate's failure without spending worker time on it.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from kernels.base import Config, Key


def ignore_sigint() -> None:
    """For the tune process's helpers (compile-ahead, the measuring worker): Ctrl-C reaches the whole
    process group, and the tune process stops the search and closes them; here it would only print
    a traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _precompile(kernel_ref: str, key: Key, dtype: str, device: str, config: Config) -> str | None:
    from kernels import get_kernel

    try:
        get_kernel(kernel_ref).precompile(key, config, dtype, device)
        return None
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return f"compile: {type(e).__name__}: {first}"


# A compile-ahead that has not answered in this long is hung (a Triton compile takes seconds; a
# FlagGems candidate is compiled by running it once): its helpers are killed and the pool restarted.
COMPILE_TIMEOUT_S = 300.0


class CompilePool:
    """`workers=0` compiles nothing ahead (the worker compiles on first use)."""

    def __init__(self, kernel_ref: str, device: str, workers: int, timeout_s: float = COMPILE_TIMEOUT_S):
        self.kernel_ref, self.device, self.workers, self.timeout_s = kernel_ref, device, workers, timeout_s
        self._pool: ProcessPoolExecutor | None = None

    def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=ignore_sigint)
        return self._pool

    def submit(self, key: Key, dtype: str, config: Config) -> Future | None:
        if self.workers <= 0 or self.device != "cuda":
            return None
        try:
            return self._ensure().submit(_precompile, self.kernel_ref, key, dtype, self.device, config)
        except BrokenProcessPool:
            self._pool = None
            return self._ensure().submit(_precompile, self.kernel_ref, key, dtype, self.device, config)

    def result(self, future: Future | None) -> str | None:
        """None when compiled (or nothing to do), else why the compile failed; a compile that
        hangs past timeout_s fails its candidate and restarts the pool (the other queued compiles
        are cancelled: their candidates compile in the worker)."""
        if future is None:
            return None
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self.close(kill=True)
            return f"compile: no answer after {self.timeout_s:g} s (hung); its helper processes were killed"
        except (BrokenProcessPool, CancelledError):
            return None  # a compile process died, or a restart dropped it: the worker compiles it and judges
        except Exception as e:
            return f"compile: {type(e).__name__}: {e}"

    def close(self, kill: bool = False) -> None:
        if self._pool is not None:
            # ProcessPoolExecutor has no public way to stop a running task: its processes are killed
            processes = list(getattr(self._pool, "_processes", {}).values()) if kill else []
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in processes:
                proc.kill()
            self._pool = None
