"""Compile-ahead helpers (real spawned processes): a hung compile fails its candidate after the
timeout, its helpers are killed, and the pool serves the next candidate."""
import time

from tuner.tuning.compile_pool import CompilePool

FAULTY = "tests.tuner.tuning.faulty_kernel:Faulty"


def test_a_hung_compile_times_out_and_the_pool_recovers():
    pool = CompilePool(FAULTY, "cuda", workers=1, timeout_s=20)  # "cuda": the pool only works for GPUs
    try:
        hung = pool.submit((8,), "fp32", {"variant": "hangs", "scale": 1})
        queued = pool.submit((8,), "fp32", {"variant": "good", "scale": 2})
        t0 = time.monotonic()
        reason = pool.result(hung)
        assert reason is not None and "hung" in reason and time.monotonic() - t0 < 60
        assert pool.result(queued) is None  # dropped by the restart: the worker compiles it
        assert pool.result(pool.submit((8,), "fp32", {"variant": "good", "scale": 1})) is None
    finally:
        pool.close(kill=True)
