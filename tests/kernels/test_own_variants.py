"""kernels/own_variants.py: what a study of an op with tuner's own GEMMs (addmm, bmm) is bound to."""

import pytest

from kernels.addmm import AddMM
from kernels.bmm import BMM
from kernels.mm import own_module
from kernels.own_variants import OWN_SPACE_MODULES, PERSISTENT, SPLITK


def modules_running(op) -> set[str]:
    """The module of every kernel an own variant of `op` can run (split-K's reduction fused or not)."""
    out = set()
    for variant in op.own_variants:
        if variant == PERSISTENT:
            out.add(op.own_module)
        elif variant == SPLITK:
            out |= {own_module({"variant": SPLITK, "SPLIT_K": 2, "FUSED_REDUCE": f}) for f in (0, 1)}
        else:
            out.add(own_module({"variant": variant}))
    return out


@pytest.mark.parametrize("op", [AddMM, BMM])
def test_a_study_covers_every_kernel_and_the_space_of_the_op(op):
    """Session 9 on the H200: addmm's study name hashed FlagGems' addmm alone, so after FUSED_REDUCE
    joined the space a re-tune resumed session 7's finished studies (0 new trials at qkv M=8, 32)."""
    assert modules_running(op) | set(OWN_SPACE_MODULES) <= set(op.source_modules)
    identity = op().source_hash()
    for dropped in op.source_modules:  # each declared module counts in the identity
        narrower = type("Narrower", (op,), {"source_modules": tuple(m for m in op.source_modules if m != dropped),
                                            "__module__": op.__module__})
        assert narrower().source_hash() != identity, dropped
