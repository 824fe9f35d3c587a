"""`tuner profile --engine vllm` without a GPU: the recorded vLLM trace summarised, stored as a
profile run (real SQLite, migrated) and printed in 80 columns; bad input refused before any engine."""
import io
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from db import open_database
from db import profile_queries as pq
from tuner import fingerprint, report
from tuner.profiling import engine_flow, engine_trace

DATA = Path(__file__).parent / "data" / "vllm026_h200_trace_sample.json.gz"
REPO = Path(__file__).resolve().parents[3]


def _summary(tmp_path):
    trace_dir = tmp_path / "tuned" / "trace"
    trace_dir.mkdir(parents=True)
    shutil.copy(DATA, trace_dir / "dp0_pp0_tp0_dcp0_ep0_rank0.1.pt.trace.json.gz")
    return engine_trace.summarise_dir(trace_dir, steps=1, flaggems=frozenset(), top=5)


def test_summary_is_stored_as_a_profile_run_of_kernels(tmp_path):
    summary = _summary(tmp_path)
    url = f"sqlite:///{tmp_path / 't.db'}"
    run_id = engine_flow.store(url, fingerprint.collect("cpu"), "vllm", "/ck", "tuned", summary)
    db = open_database(url)
    try:
        with db.session() as s:
            run = pq.get_profile_run(s, "latest")
            rows = pq.hot_ops(s, run)
            assert run.id == run_id and run.workloads == "vllm:tuned" and run.flaggems
            assert run.options["mode"] == "tuned" and 0 < run.options["triton_share"] < 0.1
            assert run.options["idle_causes"] == summary["idle_causes"] and summary["idle_causes"]
            assert run.total_us == summary["kernel_ms"] * 1e3
            assert [r.rank for r in rows] == [1, 2, 3, 4, 5, 6]
            assert rows[0].op == "cublas" and rows[0].kernel.startswith("nvjet_sm90")
            assert rows[0].total_us >= rows[1].total_us
            # then the GEMM keys: the sample's one eager key, vLLM's lm_head at M = 1
            assert (rows[5].op, rows[5].tunable, rows[5].key, rows[5].kernel) == \
                ("aten::mm", "mm", {"M": 1, "N": 151744, "K": 3584}, "eager")
    finally:
        db.dispose()


def test_tune_from_profile_takes_the_engine_keys(tmp_path):
    """Eager keys first, then the keys replayed from CUDA graphs at each capture size (by M)."""
    from tuner.profiling.hot_keys import keys_from_profile

    summary = _summary(tmp_path)
    summary["gemm_keys"] = [
        {"op": "mm", "M": 512, "N": 4608, "K": 3584, "dtype": "bf16", "place": "eager", "calls": 28, "gpu_us": 900.0},
        {"op": "addmm", "M": 512, "N": 4608, "K": 3584, "dtype": "bf16", "place": "eager", "calls": 28, "gpu_us": 800.0},
        *[{"op": "mm", "M": m, "N": 4608, "K": 3584, "dtype": "bf16", "place": "graph", "calls": 0, "gpu_us": 0.0}
          for m in (1, 2, 4)]]
    url = f"sqlite:///{tmp_path / 't.db'}"
    run_id = engine_flow.store(url, fingerprint.collect("cpu"), "vllm", "/ck", "native", summary)
    assert keys_from_profile(url, run_id, None, "mm") == ["512,4608,3584", "1,4608,3584", "2,4608,3584",
                                                           "4,4608,3584"]
    assert keys_from_profile(url, run_id, 2, "mm") == ["512,4608,3584", "1,4608,3584"]
    assert keys_from_profile(url, "latest", None, "addmm") == ["512,4608,3584"]


def test_tables_fit_80_columns(tmp_path, monkeypatch):
    summary = {**_summary(tmp_path), "profile_run_id": 3}
    buf = io.StringIO()
    monkeypatch.setattr(report, "console", Console(file=buf, width=80))
    report.engine_profile_tables({"tuned": summary, "untuned": {"error": "engine process ended with timeout"}})
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "Triton share" in text and "aten::argmax" in text and "untuned: FAILED" in text
    assert "GEMM keys (tune --from-profile 3): 1 eager" in text and "mm 1x151744x3584" in text
    assert "gaps, before cudaGraphLaunch" in text  # the decode steps' replays (a recorded trace)


def test_cli_refuses_bad_input_before_starting_an_engine(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, str(REPO / "cli.py"), "profile", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    for args, words in [(["--engine", "vllm"], "needs --model"),
                        (["--engine", "vllm", "--model", str(tmp_path / "none")], "does not exist"),
                        (["--engine", "vllm", "--model", str(tmp_path), "--modes", "fast"], "unknown mode fast"),
                        (["--engine", "sglang", "--model", str(tmp_path)], "unknown engine")]:
        r = cli(*args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
        assert not (REPO / "engine_profile").exists()  # nothing written before the input is accepted
