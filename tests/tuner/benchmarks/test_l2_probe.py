"""l2_probe's pieces on the CPU host (its timings need the GPU: gpu_queue's l2probe step)."""
import lzma
from pathlib import Path

import pytest
import torch

from kernels import get_kernel
from tuner.benchmarks import l2_probe as lp

RESULTS = Path(__file__).resolve().parents[3] / "tuner" / "benchmarks" / "results"


@pytest.mark.parametrize("op", ["mm", "addmm"])
def test_the_copy_goes_into_the_activation_or_the_scratch_just_before_the_gemm(op):
    M, N, K = 4, 3, 2
    args = get_kernel(op).make_inputs((M, N, K, 1), "fp32", "cpu", 1, 0).sets[0]
    i = lp.a_index(op)
    assert tuple(args[i].shape) == (M, K)  # the index names the activation in the op's own inputs
    src, scratch, out = torch.full((M, K), 7.0), torch.zeros(M, K), torch.empty(M, N)
    before = [t.clone() for t in args]
    seen = []
    gemm = lambda a, o: seen.append(a[i].clone())  # noqa: E731
    lp.writes_first(gemm, i, src)(args, out)
    assert torch.equal(seen[-1], src)  # A held src when the GEMM ran
    assert all(torch.equal(a, b) for j, (a, b) in enumerate(zip(args, before)) if j != i)  # nothing else
    args[i].copy_(before[i])
    lp.writes_first(gemm, None, src, scratch)(args, out)
    assert torch.equal(scratch, src) and torch.equal(seen[-1], before[i])  # A untouched, the scratch written


def test_the_summary_sets_tuned_against_cublas_each_way():
    cub = {"rotated": 1580.0, "a_cold": 1600.0, "a_in_l2": 1560.0}
    tuned = {"rotated": 1546.0, "a_cold": 1566.0, "a_in_l2": 1566.0}
    for m in (cub, tuned):
        m["a_in_l2_net"] = lp.net_of_copy(m)
    assert cub["a_in_l2_net"] == pytest.approx(1540.0)  # the copy cost 20 us before a GEMM
    line = lp.ratio_line(("mm", 4096, 37888, 3584), {"cublas": cub, "tuned": tuned})
    assert line["tuned_vs_cublas_rotated"] == pytest.approx(1546 / 1580, abs=1e-4)
    assert line["tuned_vs_cublas_a_in_l2_net"] == pytest.approx(1546 / 1540, abs=1e-4)
    assert line["cublas_a_in_l2_vs_a_cold"] == pytest.approx(1560 / 1600, abs=1e-4)
    assert line["tuned_a_in_l2_vs_a_cold"] == 1.0
    # without a tuned config only cuBLAS' own line
    assert set(lp.ratio_line(("mm", 1, 2, 3), {"cublas": cub})) == {"key", "cublas_a_in_l2_vs_a_cold"}


def test_the_tuned_configs_are_those_run_11s_engine_served(tmp_path):
    from tuner.benchmarks.clock_probe import tuned_configs

    db = tmp_path / "run11.db"
    db.write_bytes(lzma.decompress((RESULTS / "vllm" / "h200_run11" / "bench_gemm.db.xz").read_bytes()))
    configs = tuned_configs(f"sqlite:///{db}", lp.KEYS)
    assert set(configs) == set(lp.KEYS)
    assert configs[("mm", 4096, 37888, 3584)]["GROUP_M"] == 16  # gate_up as the engine ran it (1.031x there)
