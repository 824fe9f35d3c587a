"""On the GPU (`pytest -m gpu`): l2_probe times a key both ways and the write it subtracts."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


@pytest.mark.parametrize("op", ["mm", "addmm"])
def test_a_key_is_timed_rotated_and_after_each_kind_of_copy(op):
    from tuner.benchmarks import l2_probe as lp

    medians, line = lp.probe_key((op, 512, 1024, 1024), None, rounds=2)
    m = medians["cublas"]
    assert m["rounds"] == 2 and all(m[w] > 0 for w in lp.WAYS)
    # a copy before the GEMM costs time; with it taken out again the GEMM is left, not nothing
    assert m["a_cold"] > m["rotated"] and 0.2 < m["a_in_l2_net"] / m["rotated"] < 5
    assert set(line) == {"key", "cublas_a_in_l2_vs_a_cold"}
