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
