import pytest

from tuner.serving import bench_stats as bs


def test_percentile_interpolates_and_handles_edges():
    assert bs.percentile([], 50) is None
    assert bs.percentile([3.0], 99) == 3.0
    assert bs.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert bs.percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert bs.percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)


def test_log_events_counts_autotunes_and_jit_compiles_by_kernel():
    lines = [
        "INFO flag_gems.utils.libentry: Autotuning kernel mm_kernel_general_host_tma with 162 configs",
        "WARNING [jit_monitor.py:52] Triton kernel JIT compilation during inference: argmax_kernel_inner",
        "WARNING [jit_monitor.py:52] Triton kernel JIT compilation during inference: argmax_kernel_inner",
        "(EngineCore pid=5318) WARNING 11-30 13:57:44 [jit_monitor.py:135] Triton kernel JIT compilation during "
        "inference: fill_scalar_kernel. This causes a latency spike; consider extending warmup",  # vLLM 0.26's line
        "INFO tuner plugin: 24 tuned configs active",
    ]
    ev = bs.log_events(lines)
    assert ev == {"autotunes": 1, "jit_compiles": 3,
                  "jit_kernels": {"argmax_kernel_inner": 2, "fill_scalar_kernel": 1}, "router_calls": None,
                  "moe_configs": None}
    line = "(EngineCore pid=1) INFO [gemm_router.py:1] tuner router: GEMM calls dispatched since start: " \
           "FlagGems 448, split-K 0, native 3920"
    assert bs.log_events([line])["router_calls"] == {"flaggems": 448, "splitk": 0, "native": 3920}
    # one line per process that installed the router (tensor-parallel workers): summed
    assert bs.log_events([line, line])["router_calls"] == {"flaggems": 896, "splitk": 0, "native": 7840}


SITE = "/tmp/site/vllm/model_executor/layers/fused_moe/configs"  # vLLM's shipped configs on the GPU host
KEY = "E=128,N=768,device_name=NVIDIA_H200.json"


def _moe_line(level: str, line_no: int, message: str, pid: int = 5318) -> str:
    """A line as vLLM's logger writes it (vllm/logger.py's _FORMAT, the engine core's process name)."""
    return f"(EngineCore_DP0 pid={pid}) {level} 11-30 21:04:{line_no % 60:02d} [fused_moe.py:{line_no}] {message}"


def test_log_events_counts_the_moe_config_files_each_mode_read():
    tuned = f"/tmp/bench-moe/tuned/runtime/{bs.MOE_FOLDER}/{KEY}"
    lines = [
        _moe_line("INFO", 1153, f"Using configuration from {tuned} for MoE layer."),
        _moe_line("INFO", 1153, f"Using configuration from {tuned} for MoE layer.", pid=5320),  # a second worker
        _moe_line("INFO", 1153, f"Using configuration from {SITE}/E=128,N=384,device_name=NVIDIA_H200.json for "
                                "MoE layer."),
        "INFO 11-30 21:04:09 [gpu_model_runner.py:2602] Model loading took 11.2 GiB",
    ]
    ev = bs.log_events(lines)
    assert ev["moe_configs"] == {tuned: 2, f"{SITE}/E=128,N=384,device_name=NVIDIA_H200.json": 1}
    assert [bs.moe_source(k) for k in ev["moe_configs"]] == ["tuner", "vllm"]
    # no file: vLLM names the paths it tried and serves its default config
    default = _moe_line("WARNING", 1166, "Using default MoE config. Performance might be sub-optimal! Config file "
                                         f"not found at /tmp/rt/{bs.MOE_FOLDER}/{KEY}, {SITE}/{KEY}")
    assert bs.log_events([default, default])["moe_configs"] == {bs.MOE_DEFAULT: 2}
    assert bs.moe_source(bs.MOE_DEFAULT) == "default"
    assert bs.moe_source(f"/home/me/moe/{KEY}") == "other"  # a VLLM_TUNED_CONFIG_FOLDER of one's own
    # the dense model's log: no MoE layer, no count (not an empty one)
    assert bs.log_events(lines[-1:])["moe_configs"] is None


def test_moe_patterns_match_the_installed_vllm_messages():
    """The regexes against the messages in the installed vLLM's own source (read, not imported)."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("vllm")
    if spec is None:
        pytest.skip("vllm is not installed")
    src = (Path(spec.origin).parent / "model_executor/layers/fused_moe/fused_moe.py").read_text()
    found = re.search(r'logger\.info(?:_once)?\(\s*"(Using configuration from %s for MoE layer\.)"', src)
    assert found, "vLLM's fused_moe.py no longer logs the config file it reads in the known form"
    path = f"{SITE}/{KEY}"
    assert bs.log_events([_moe_line("INFO", 1153, found.group(1) % path)])["moe_configs"] == {path: 1}
    default = re.search(r'logger\.warning(?:_once)?\(\s*\(?"(Using default MoE config\. [^"]*)"\s*"([^"]*)"', src)
    assert default, "vLLM's fused_moe.py no longer logs its default MoE config in the known form"
    message = (default.group(1) + default.group(2)) % path
    assert bs.log_events([_moe_line("WARNING", 1166, message)])["moe_configs"] == {bs.MOE_DEFAULT: 1}


def _batch(c, phase, tps, ttft=(), tpot=()):
    return {"concurrency": c, "phase": phase, "output_tok_s": tps, "ttft_ms": list(ttft), "tpot_ms": list(tpot)}


def test_summarise_mode_takes_warm_median_and_keeps_cold_apart():
    result = {"mode": "tuned", "start_s": 52.0, "batches": [
        _batch(1, "cold", 100.0, [50.0], [9.0]),
        _batch(64, "cold", 4000.0),
        _batch(1, "warm", 140.0, [20.0], [7.0]),
        _batch(1, "warm", 150.0, [22.0], [6.0]),
        _batch(1, "warm", 120.0, [24.0], [8.0]),
        _batch(64, "warm", 4100.0), _batch(64, "warm", 4300.0),  # two repeats: their mean, not the max
        _batch(1, "profile", 1.0),  # never part of the numbers
    ]}
    rows = bs.summarise_mode(result, {"autotunes": 0, "jit_compiles": 2})
    one = next(r for r in rows if r["concurrency"] == 1)
    assert one["output_tok_s"] == 140.0 and one["output_tok_s_cold"] == 100.0
    assert one["ttft_ms_p50"] == 22.0 and one["tpot_ms_p50"] == 7.0
    assert one["autotunes"] == 0 and one["jit_compiles"] == 2 and one["start_s"] == 52.0
    many = next(r for r in rows if r["concurrency"] == 64)
    assert many["output_tok_s"] == 4200.0 and many["output_tok_s_cold"] == 4000.0
    assert many["ttft_ms_p50"] is None
    assert one["output_tok_s_warm"] == [140.0, 150.0, 120.0] and many["output_tok_s_warm"] == [4100.0, 4300.0]
    only_cold = bs.summarise_mode({"mode": "native", "batches": [_batch(1, "cold", 90.0)]}, {})
    assert only_cold[0]["output_tok_s"] == 90.0 and only_cold[0]["output_tok_s_warm"] == []


def test_agreement_counts_positions_and_the_worst_logprob_gap():
    ref = [{"top1": [1, 2, 3, 4], "actual_logprob": [-1.0, -2.0, None, -0.5]}]
    other = [{"top1": [1, 2, 9, 4], "actual_logprob": [-1.1, -2.0, -3.0, -0.2]}]
    a = bs.agreement(ref, other)
    assert a["positions"] == 4
    assert a["top1_agreement"] == pytest.approx(0.75)
    assert a["max_abs_dlogprob"] == pytest.approx(0.3)
    assert bs.agreement([], [])["top1_agreement"] is None


def test_ratios_are_against_native_at_the_same_concurrency():
    rows = [{"mode": "native", "concurrency": 1, "output_tok_s": 200.0},
            {"mode": "tuned", "concurrency": 1, "output_tok_s": 210.0},
            {"mode": "tuned", "concurrency": 64, "output_tok_s": 5000.0}]
    out = bs.with_ratios(rows)
    assert out[1]["vs_native"] == pytest.approx(1.05)
    assert out[2]["vs_native"] is None  # no native row at 64
