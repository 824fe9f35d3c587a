"""On the GPU (`pytest -m gpu`): l2_probe times a key both ways and the write it subtracts."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def test_a_key_is_timed_rotated_and_with_its_activation_written_first():
    from tuner.benchmarks import l2_probe as lp

    medians, line = lp.probe_key(("mm", 512, 1024, 1024), None, rounds=2)
    m = medians["cublas"]
    assert m["rotated"] > 0 and m["write_us"] > 0 and m["rounds"] == 2
    # the GEMM after its write, less the write: a GEMM's time, not the write's nor nothing
    assert 0.2 < m["a_in_l2"] / m["rotated"] < 5
    assert set(line) == {"key", "cublas_a_in_l2_vs_rotated"}
