"""Issue 16's report: per-baseline speedups, the shipped / unshipped split of the targets, per dtype."""

import math

from tuner.benchmarks.report_vllm_moe import speedups, summary, summary_line


def _rec(E, N, M, tuned, dtype="bf16", **base):
    return {"key": {"E": E, "N": N, "K": 2048, "top_k": 8, "M": M}, "dtype": dtype, "time_us": tuned,
            "baselines_us": base}


def test_speedups_are_baseline_over_tuned_and_none_where_untimed():
    s = speedups(_rec(128, 768, 1, 10.0, vllm_shipped=12.0, vllm_default=15.0))
    assert s == {"vllm_shipped": 1.2, "vllm_default": 1.5, "flaggems_default": None}


def test_shipped_keys_count_against_shipped_the_others_against_the_default():
    rows = [_rec(128, 768, 1, 10.0, vllm_shipped=11.0, vllm_default=20.0, flaggems_default=13.0),
            _rec(128, 768, 64, 20.0, vllm_shipped=20.0, vllm_default=30.0),
            _rec(128, 384, 1, 10.0, vllm_default=13.0, flaggems_default=10.0),  # nothing shipped
            _rec(128, 384, 1, 5.0, dtype="fp8_w8a8", vllm_default=10.0)]
    d = summary(rows)
    bf = d["bf16"]
    assert bf["keys"] == 3 and bf["shipped_shapes"] == [(128, 768, 2048, 8)]
    assert bf["vs_shipped"]["n"] == 2 and math.isclose(bf["vs_shipped"]["geomean"], math.sqrt(1.1))
    assert bf["vs_shipped"]["min"] == 1.0
    # the default counts only where nothing is shipped: 1.3, not 2.0 or 1.5
    assert bf["vs_default_unshipped"] == {"n": 1, "geomean": 1.3, "min": 1.3}
    assert bf["vs_flaggems_default"]["n"] == 2 and math.isclose(bf["vs_flaggems_default"]["geomean"], math.sqrt(1.3))
    fp8 = d["fp8_w8a8"]
    assert fp8["vs_shipped"]["n"] == 0 and math.isnan(fp8["vs_shipped"]["geomean"]) and fp8["shipped_shapes"] == []
    assert fp8["vs_default_unshipped"]["geomean"] == 2.0


def test_a_baseline_with_no_key_says_why_instead_of_nan():
    """Session 9's report printed 'geomean nanx' for bf16's unshipped keys: vLLM ships all four."""
    fp8 = summary([_rec(128, 384, 1, 5.0, dtype="fp8_w8a8", vllm_default=10.0)])["fp8_w8a8"]
    line = summary_line("vLLM shipped", fp8["vs_shipped"], 1.05, "vLLM ships none of these shapes")
    assert line == "- vs vLLM shipped: no key (vLLM ships none of these shapes)"
    line = summary_line("vLLM default", fp8["vs_default_unshipped"], 1.2, "-")
    assert line == "- vs vLLM default: geomean 2.000x, min 2.00x over 1 keys (target >= 1.2x)"
