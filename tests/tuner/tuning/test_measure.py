"""The correctness verdict on real mm inputs (CPU): the relative bound and the elementwise one."""
from kernels import get_kernel
from tuner.tuning import measure


def test_a_zeroed_tile_fails_though_the_norm_passes():
    """A 2048 x 4096 bf16 product with one 16x16 tile zeroed: 0.5% of the norm (under bf16's 1e-2),
    but elements off by most of the largest one."""
    mm = get_kernel("mm")
    inputs = mm.make_inputs((2048, 4096, 64, 1), "bf16", "cpu", 1, seed=0)

    def right(args, out):
        out.copy_(mm.reference(args).to(out.dtype))

    def zeroed_tile(args, out):
        right(args, out)
        out[16:32, 32:48] = 0

    good = measure.check(mm, right, inputs)
    assert measure.wrong_result(mm, good, "bf16") is None
    bad = measure.check(mm, zeroed_tile, inputs)
    assert bad.rel_error <= mm.tolerance("bf16")  # the relative bound alone lets it through
    reason = measure.wrong_result(mm, bad, "bf16")
    assert reason is not None and "an element is off by" in reason


def test_a_warm_up_runs_before_the_timing_and_is_not_timed_on_the_cpu():
    """measure.time_runner's warm_ms (clock_probe's warmed regimes): wall time of calls on a CPU."""
    import time

    from kernels.base import Inputs
    from tuner.tuning import measure

    calls = []

    def run(args, out):
        calls.append(1)
        time.sleep(0.001)

    inputs = Inputs(sets=[()], outs=[None])
    cold_us, how = measure.time_runner(run, inputs, "cpu")
    n_cold = len(calls)
    calls.clear()
    warm_us, _ = measure.time_runner(run, inputs, "cpu", warm_ms=60.0)
    assert how == "interpreter-wall" and n_cold == 4
    assert len(calls) - n_cold >= 20  # ~50 calls of 1 ms in the 60 ms warm-up
    assert 0.5 < warm_us / cold_us < 3  # one call's time, not the warm-up's


def test_a_pass_rotates_who_goes_first():
    from tuner.tuning.measure import rotation

    names = ["config0", "native", "untuned"]
    assert [rotation(names, r) for r in range(4)] == [
        names, ["native", "untuned", "config0"], ["untuned", "config0", "native"], names]
