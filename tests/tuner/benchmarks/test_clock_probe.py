"""clock_probe's arithmetic and inputs on the CPU host (its timings need the GPU: gpu_queue's
clockprobe step)."""
import lzma
from pathlib import Path

import pytest

from tuner.benchmarks import clock_probe as cp

RESULTS = Path(__file__).resolve().parents[3] / "tuner" / "benchmarks" / "results"


def test_reason_bits_are_named_as_nvidia_smi_names_them():
    assert cp.reason_names(0) == []
    assert cp.reason_names(0x4 | 0x1) == ["gpu_idle", "sw_power_cap"]
    assert cp.reason_names(0x4 | 0x1000) == ["sw_power_cap", "0x1000"]  # a bit this table lacks stays visible


def test_a_timing_is_summarised_by_its_median_clock_and_every_reason_seen():
    s = cp.summarise([(1980.0, 300.0, 0, 41.0), (1755.0, 699.0, 0x4, 55.0), (1785.0, 690.0, 0x4, 53.0)])
    assert s == {"samples": 3, "sm_mhz": 1785.0, "sm_mhz_min": 1755.0, "power_w": 690.0, "temp_c": 55.0,
                 "reasons": ["sw_power_cap"]}
    assert cp.summarise([]) == {"samples": 0}


def test_the_summary_sets_time_against_clock_per_runner():
    rows = {("search", "cublas"): {"time_us": 1400.0, "sm_mhz": 1980.0},
            ("sustained", "cublas"): {"time_us": 1631.0, "sm_mhz": 1700.0},
            ("search", "tuned"): {"time_us": 1397.6, "sm_mhz": 1980.0},
            ("sustained", "tuned"): {"time_us": 1617.5, "sm_mhz": 1695.0}}
    line = cp.ratio_line(("mm", 4096, 37888, 3584), rows)
    assert line["key"] == ["mm", 4096, 37888, 3584]
    assert line["cublas"] == {"time_ratio": pytest.approx(1631 / 1400, abs=1e-4),
                              "clock_ratio": pytest.approx(1700 / 1980, abs=1e-4)}
    assert set(line) == {"key", "cublas", "tuned"}
    # a runner without its clock (NVML gave none) has no line rather than a division by zero
    assert "tuned" not in cp.ratio_line(("mm", 1, 2, 3), {**rows, ("search", "tuned"): {"time_us": 1.0}})


def test_the_configs_come_from_a_tuner_database(tmp_path):
    db = tmp_path / "s16.db"
    db.write_bytes(lzma.decompress((RESULTS / "gemm_h200" / "session16" / "gemm.db.xz").read_bytes()))
    configs = cp.tuned_configs(f"sqlite:///{db}")
    assert set(configs) == set(cp.KEYS)  # every probed key has a record there
    assert configs[("mm", 4096, 37888, 3584)]["variant"] == "persistent"
    assert cp.tuned_configs(None) == {}
    # a database with other ops' records too (attention keys have no M): they are passed over
    from db import open_database, queries

    d = open_database(str(db))
    with d.session() as s:
        env = queries.get_or_create_environment(s, "fp-attn", {"device": "cuda", "torch": "2.11", "triton": "3.6",
                                                                "python": "3.12"})
        run = queries.start_run(s, env, kernel="attention", sampler="tpe", device="cuda", compile_workers=0)
        s.commit()
        env_id, run_id = env.id, run.id
    queries.store_best(d.session, environment_id=env_id, kernel="attention", dtype="bf16", run_id=run_id,
                       key_values={"B": 1, "H": 28, "KV": 4, "SQ": 512, "SK": 512, "D": 128, "CAUSAL": 1},
                       kernel_source_hash="h", config={"BLOCK_M": 64}, time_us=10.0, native_us=11.0,
                       max_abs_error=0.0, rel_error=0.0, trials_used=1, timing="cuda-graph", study_name="a",
                       confirmed=True)
    d.dispose()
    assert cp.tuned_configs(f"sqlite:///{db}") == configs


@pytest.mark.parametrize("probe", ["clock_probe", "l2_probe"])
def test_without_a_gpu_the_probes_say_so(probe, capsys):
    import importlib

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    main = importlib.import_module(f"tuner.benchmarks.{probe}").main
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2 and "needs an NVIDIA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--rounds", "0"])
    assert e.value.code == 2 and "--rounds" in capsys.readouterr().err.splitlines()[-1]


def test_a_warmed_regime_is_set_against_the_sustained_pass():
    rows = {("search", "tuned"): {"time_us": 1397.6, "sm_mhz": 1980.0},
            ("warmed_250", "tuned"): {"time_us": 1500.0, "sm_mhz": 1800.0},
            ("warmed_1000", "tuned"): {"time_us": 1610.0, "sm_mhz": 1700.0},
            ("sustained", "tuned"): {"time_us": 1617.5, "sm_mhz": 1695.0}}
    line = cp.ratio_line(("mm", 4096, 37888, 3584), rows)["tuned"]
    assert line["warmed_250_vs_sustained"] == pytest.approx(1500 / 1617.5, abs=1e-4)
    assert line["warmed_1000_vs_sustained"] == pytest.approx(1610 / 1617.5, abs=1e-4)
    assert line["time_ratio"] == pytest.approx(1617.5 / 1397.6, abs=1e-4)
    # without a clock reading in the search timing (NVML failed) the warmed ratios still come
    rows[("search", "tuned")] = {"time_us": 1397.6}
    line = cp.ratio_line(("mm", 4096, 37888, 3584), rows)["tuned"]
    assert "time_ratio" not in line and line["warmed_250_vs_sustained"] == pytest.approx(1500 / 1617.5, abs=1e-4)


@pytest.mark.parametrize("bad", ["fast", "250,-1", "0", "nan", "inf"])
def test_bad_warm_ups_are_refused_before_the_gpu_is_asked(bad, capsys):
    with pytest.raises(SystemExit) as e:
        cp.main(["--warm-ms", bad])
    assert e.value.code == 2 and "--warm-ms" in capsys.readouterr().err
