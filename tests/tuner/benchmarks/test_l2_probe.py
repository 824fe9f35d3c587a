"""l2_probe's pieces on the CPU host (its timings need the GPU: gpu_queue's l2probe step)."""
import lzma
from pathlib import Path

import pytest
import torch

from tuner.benchmarks import l2_probe as lp

RESULTS = Path(__file__).resolve().parents[3] / "tuner" / "benchmarks" / "results"


def test_the_activation_is_written_just_before_the_gemm_reads_it():
    seen = []
    src = torch.full((2, 3), 7.0)

    def gemm(args, out):
        seen.append(args[1].clone())  # addmm's A: (bias, a, b)
        out.copy_(args[1] @ args[2])

    bias, a, b, out = torch.zeros(3), torch.zeros(2, 3), torch.eye(3), torch.empty(2, 3)
    lp.writes_a_first(gemm, lp.a_index("addmm"), src)((bias, a, b), out)
    assert torch.equal(seen[0], src) and torch.equal(out, src)  # A held src when the GEMM ran
    a.zero_()
    lp.write_only(lp.a_index("mm"), src)((a, b), out)
    assert torch.equal(a, src)
    assert (lp.a_index("mm"), lp.a_index("addmm")) == (0, 1)


def test_the_summary_sets_tuned_against_cublas_each_way():
    medians = {"cublas": {"rotated": 1580.0, "a_in_l2": 1545.0}, "tuned": {"rotated": 1546.0, "a_in_l2": 1600.0}}
    line = lp.ratio_line(("mm", 4096, 37888, 3584), medians)
    assert line["tuned_vs_cublas_rotated"] == pytest.approx(1546 / 1580, abs=1e-4)
    assert line["tuned_vs_cublas_a_in_l2"] == pytest.approx(1600 / 1545, abs=1e-4)
    assert line["cublas_a_in_l2_vs_rotated"] == pytest.approx(1545 / 1580, abs=1e-4)
    # without a tuned config only cuBLAS' own line
    assert set(lp.ratio_line(("mm", 1, 2, 3), {"cublas": medians["cublas"]})) == {"key", "cublas_a_in_l2_vs_rotated"}


def test_the_tuned_configs_come_from_session_17s_database(tmp_path):
    from tuner.benchmarks.clock_probe import tuned_configs

    db = tmp_path / "s17.db"
    db.write_bytes(lzma.decompress((RESULTS / "gemm_h200" / "session17" / "gemm.db.xz").read_bytes()))
    configs = tuned_configs(f"sqlite:///{db}", lp.KEYS)
    assert set(configs) == set(lp.KEYS)
    assert configs[("mm", 4096, 37888, 3584)]["GROUP_M"] == 8  # the finalists' pick of session 17

