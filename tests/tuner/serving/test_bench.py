"""`tuner bench`'s flow pieces that need no GPU: input checks, the summary of recorded mode results,
the 80-column table, the chart, and the database rows (real SQLite, migrated)."""
import io

import pytest
import torch
from rich.console import Console

from db import bench_queries, open_database, queries
from tests.conftest import model_folder
from tuner.errors import UserError
from tuner.inject.plugin import read_state
from tuner.serving import bench as flow
from tuner.serving.bench_report import agreement_lines, bench_chart, bench_table


def _mode(mode, tps1, tps64, start, logprob_shift=0.0, flip=0, small_flip=0):
    batches = [{"concurrency": 1, "phase": "cold", "output_tok_s": tps1 * 0.8, "ttft_ms": [30.0], "tpot_ms": [5.0]},
               {"concurrency": 64, "phase": "cold", "output_tok_s": tps64 * 0.9, "ttft_ms": [], "tpot_ms": []}]
    for _ in range(2):
        batches += [{"concurrency": 1, "phase": "warm", "output_tok_s": tps1, "ttft_ms": [20.0], "tpot_ms": [4.8]},
                    {"concurrency": 64, "phase": "warm", "output_tok_s": tps64, "ttft_ms": [300.0] * 64,
                     "tpot_ms": [11.0] * 63 + [14.0]}]
    top1 = list(range(100))
    top1[:flip] = [-1] * flip
    small = [{"top1": [7] * (n - 1), "actual_logprob": [-3.0] * (n - 1)} for n in (8, 16, 32)]
    small[0]["top1"][:small_flip] = [-1] * small_flip
    small[1]["actual_logprob"][0] -= small_flip * 0.5
    return {"mode": mode, "start_s": start, "batches": batches, "small_m_logprobs": small,
            "engine": {"capture_sizes": [1, 2, 4, 8], "cudagraph_mode": "FULL_AND_PIECEWISE",
                       "max_num_batched_tokens": 4096},
            "prompt_logprobs": [{"top1": top1, "actual_logprob": [-2.0 + logprob_shift] * 100}],
            "events": {"autotunes": 0, "jit_compiles": 0, "jit_kernels": {}}}


def _report():
    return flow.summarise([_mode("native", 208.0, 5611.0, 59.0), _mode("tuned", 210.0, 5600.0, 61.0, 0.05, 1, 2),
                           {"mode": "untuned", "error": "engine process ended with 1; see log",
                            "events": {"autotunes": 3, "jit_compiles": 0, "jit_kernels": {}}}])


def test_summarise_ratios_agreement_and_errors():
    rep = _report()
    tuned1 = next(r for r in rep["runs"] if r["mode"] == "tuned" and r["concurrency"] == 1)
    assert tuned1["vs_native"] == pytest.approx(210 / 208)
    assert tuned1["agreement_top1_agreement"] == pytest.approx(0.99)
    assert tuned1["tpot_ms_p50"] == pytest.approx(4.8)
    assert rep["errors"] == {"untuned": "engine process ended with 1; see log"}
    assert {r["mode"] for r in rep["runs"]} == {"native", "tuned"}
    # the short prompts (one per engine step: M = 8, 16, 32) are counted apart from the long ones
    small = rep["agreement"]["tuned"]["small_m"]
    assert small == {"positions": 7 + 15 + 31, "top1_agreement": pytest.approx(51 / 53), "max_abs_dlogprob": 1.0}
    assert tuned1["agreement_small_m_top1_agreement"] == pytest.approx(51 / 53)
    assert rep["engine"]["tuned"]["capture_sizes"] == [1, 2, 4, 8]
    assert "route_within" not in tuned1  # run_mode tags a tuned result with its --route-within
    within = flow.summarise([_mode("native", 208.0, 5611.0, 59.0),
                             {**_mode("tuned", 210.0, 5600.0, 61.0), "route_within": 1.02}])
    assert {r["mode"]: r.get("route_within") for r in within["runs"]} == {"native": None, "tuned": 1.02}


def test_table_fits_80_columns_without_cutting(tmp_path):
    rep = _report()
    buf = io.StringIO()
    Console(file=buf, width=80).print(bench_table(rep))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and "5611" in text and "1.01" in text
    lines = agreement_lines(rep)
    assert any("top-1 agreement 99.0%" in line for line in lines)
    assert any("53 positions of short prompts" in line and "top-1 96.2%" in line for line in lines)
    assert any("untuned: FAILED" in line for line in lines)


def test_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = bench_chart(_report(), tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def store_and_read(tmp_path, rows, engine="vllm"):
    """The rows through bench_queries into a real SQLite database and back (the newest bench)."""
    db = open_database(f"sqlite:///{tmp_path / 't.db'}")
    try:
        with db.session() as s:
            env = queries.get_or_create_environment(s, "f" * 64, {"device": "cuda", "gpu_name": "NVIDIA H200",
                                                                  "torch": "2.11", "triton": "3.6", "python": "3.12"})
            bench_queries.add_bench(s, environment_id=env.id, bench_id="b1", engine=engine, model="/m", rows=rows)
            s.commit()
        with db.session() as s:
            return bench_queries.bench_rows(s)
    finally:
        db.dispose()


def test_rows_are_stored_and_read_back(tmp_path):
    rows = store_and_read(tmp_path, _report()["runs"])
    assert len(rows) == 4 and rows[0]["bench_id"] == "b1"
    tuned = next(r for r in rows if r["mode"] == "tuned" and r["concurrency"] == 64)
    assert tuned["output_tok_s"] == 5600.0 and tuned["vs_native"] == pytest.approx(5600 / 5611)


@pytest.mark.parametrize("change, words", [
    ({"engine": "transformers"}, "engines of vllm, flagscale, not 'transformers'"),
    ({"engine": "vllm,vllm"}, "different engines"),
    ({"engine": ""}, "one or more"),
    ({"served": True, "profile": True}, "--profile needs the in-process engine"),
    ({"served": True, "port": 70000}, "not a TCP port"),
    ({"modes": ("native", "fast")}, "unknown mode fast"),
    ({"concurrency": (0,)}, "positive"),
    ({"prompt_tokens": 4000}, "4096-token context"),
    ({"warm_repeats": 0}, "--warm-repeats must be a positive number"),
    ({"rounds": 0}, "--rounds must be a positive number"),
    ({"profile_concurrency": 0}, "--profile-concurrency must be a positive number"),
    ({"route_within": 3.0}, "--route-within takes a factor from 0.5 to 1.5"),
    ({"modes": ("native", "untuned"), "route_within": 1.02}, "applies to tuned routes: add tuned to --modes"),
])
def test_bad_requests_are_refused(tmp_path, change, words):
    req = flow.BenchRequest(model=str(tmp_path), **change)
    with pytest.raises(UserError, match=words):
        flow.validate(req)


def test_a_folder_without_config_or_a_machine_without_gpu_is_refused_before_any_mode(tmp_path):
    """Each mode's engine process found these only after starting (on the CPU host: "native:
    FAILED: engine process ended with 1", vLLM's "Device string must not be empty")."""
    with pytest.raises(UserError, match="has no config.json: not a model folder"):
        flow.validate(flow.BenchRequest(model=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UserError, match="vllm serve on an NVIDIA GPU, and none is visible"):
        flow.validate(flow.BenchRequest(model=str(tmp_path)))


def test_route_within_applies_to_the_tuned_mode_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    open_database(url).dispose()
    req = flow.BenchRequest(model=str(model_folder(tmp_path)), route_within=1.02, db_url=url, allow_foreign=True)
    for mode, want in (("tuned", 1.02), ("untuned", 1.0)):
        env = flow.mode_env(req, mode, tmp_path / mode)
        assert read_state(env["TUNER_RUNTIME_DIR"])["route_within"] == want


def test_engine_process_arguments_are_its_own_parsers(tmp_path):
    """What the parent passes, the mode's process (tuner.serving.bench_engine) parses back."""
    from tuner.serving import bench_engine

    req = flow.BenchRequest(model=str(tmp_path), profile=True, profile_concurrency=64, concurrency=(1, 8))
    argv = flow.engine_args(req, "tuned", tmp_path / "tuned")
    assert argv[1:3] == ["-m", "tuner.serving.bench_engine"]
    a = bench_engine.parse_args(argv[3:])
    assert (a.mode, a.concurrency, a.profile_concurrency, a.profile_dir) == \
        ("tuned", [1, 8], 64, str(tmp_path / "tuned" / "trace"))
    plain = bench_engine.parse_args(flow.engine_args(flow.BenchRequest(model=str(tmp_path)), "native", tmp_path)[3:])
    assert plain.profile_dir is None and plain.profile_concurrency == 1


def test_rounds_alternate_the_order_and_profile_the_first_round_only(tmp_path):
    assert [flow.round_order(("native", "tuned"), n) for n in (1, 2, 3)] == [
        ("native", "tuned"), ("tuned", "native"), ("native", "tuned")]
    req = flow.BenchRequest(model=str(tmp_path), profile=True, rounds=2)
    assert "--profile-dir" in flow.engine_args(req, "tuned", tmp_path / "tuned", 1)
    assert "--profile-dir" not in flow.engine_args(req, "tuned", tmp_path / "tuned.r2", 2)


def _round(tps1_native, tps1_tuned, tuned_error=False):
    tuned = ({"mode": "tuned", "error": "engine process ended with 1; see log",
              "events": {"autotunes": 0, "jit_compiles": 0, "jit_kernels": {}}} if tuned_error
             else _mode("tuned", tps1_tuned, 5700.0, 61.0))
    return flow.summarise([_mode("native", tps1_native, 5600.0, 59.0), tuned])


def test_rounds_report_medians_of_each_rounds_own_ratio():
    """Three engine pairs (session 14's c=1: one pair said 1.061x): the table's x native is the
    median of the rounds' ratios, each round's tuned over the same round's native; a round whose
    tuned engine failed is left out of the median and named among the errors."""
    from tuner.serving.bench_report import rounds_lines
    from tuner.serving.bench_stats import over_rounds

    rounds = [_round(202.5, 214.8), _round(210.0, 212.0), _round(200.0, 206.0), _round(205.0, 0, tuned_error=True)]
    rep = over_rounds(rounds[0], rounds)
    tuned1 = next(r for r in rep["runs"] if r["mode"] == "tuned" and r["concurrency"] == 1)
    assert tuned1["vs_native_rounds"] == pytest.approx([214.8 / 202.5, 212 / 210, 206 / 200])
    assert tuned1["vs_native"] == pytest.approx(206 / 200)  # the median ratio, not a ratio of medians
    assert tuned1["output_tok_s_rounds"] == pytest.approx([214.8, 212.0, 206.0])
    assert tuned1["output_tok_s"] == pytest.approx(212.0)
    native1 = next(r for r in rep["runs"] if r["mode"] == "native" and r["concurrency"] == 1)
    assert native1["output_tok_s"] == pytest.approx((202.5 + 205.0) / 2)  # four rounds ran native
    assert rep["errors"] == {"tuned (round 4)": "engine process ended with 1; see log"}
    lines = rounds_lines(rep)
    assert lines[0].startswith("4 rounds")
    assert "  tuned, 1 concurrent: 1.030x native, rounds 1.061 1.010 1.030 (in 3 of 4)" in lines
    assert all(len(line) <= 80 for line in lines)
    # the first round's tuned engine failed: its row comes from the next round that ran it
    late = over_rounds(_round(205.0, 0, tuned_error=True), [_round(205.0, 0, tuned_error=True), _round(200.0, 206.0)])
    assert [r["vs_native_rounds"] for r in late["runs"] if r["mode"] == "tuned" and r["concurrency"] == 1] == \
        [[pytest.approx(1.03)]]
    assert rounds_lines(_report()) == []  # one round: no lines


def test_moe_config_files_per_mode_reach_the_report_and_its_lines(tmp_path):
    """A MoE checkpoint's bench: each mode's engine log says which fused-MoE config file served (vLLM's
    own lines, tests/tuner/serving/test_bench_stats.py), and the report says it per mode."""
    from tests.tuner.serving.test_bench_stats import KEY, SITE, _moe_line
    from tuner.serving import bench_stats

    runtime = tmp_path / "tuned" / "runtime" / bench_stats.MOE_FOLDER / KEY
    logs = {"native": [_moe_line("INFO", 1153, f"Using configuration from {SITE}/{KEY} for MoE layer.")],
            "untuned": [_moe_line("WARNING", 1166, "Using default MoE config. Performance might be sub-optimal! "
                                                   f"Config file not found at {SITE}/{KEY}")],
            "tuned": [_moe_line("INFO", 1153, f"Using configuration from {runtime} for MoE layer.")]}
    results = []
    for mode, tps in (("native", 200.0), ("untuned", 150.0), ("tuned", 230.0)):
        log = tmp_path / f"{mode}.log"
        log.write_text("\n".join(["INFO 11-30 21:04:01 [loader.py:1] loading", *logs[mode]]) + "\n")
        results.append({**_mode(mode, tps, tps * 20, 60.0),
                        "events": bench_stats.log_events(log.read_text().splitlines())})
    rep = flow.summarise(results)
    assert rep["moe_configs"] == {"native": {f"{SITE}/{KEY}": 1}, "untuned": {bench_stats.MOE_DEFAULT: 1},
                                  "tuned": {str(runtime): 1}}
    lines = agreement_lines(rep)
    assert f"native: MoE configs served: vLLM's shipped {KEY} (1 line)" in lines
    assert "untuned: MoE configs served: vLLM's default config (no file found) (1 line)" in lines
    assert f"tuned: MoE configs served: tuner's runtime folder {KEY} (1 line)" in lines
    # a dense model's bench has no MoE line
    assert not any("MoE" in line for line in agreement_lines(_report()))
