"""tuner.benchmarks.e2e_llm on a CPU: the real driver, a tiny model, subprocesses (no mocks).

The GPU path (CUDA graphs, FlagGems modes) runs with tuner/benchmarks/e2e_h100.sh on an H100.
"""
import json
import shutil
import subprocess
import sys

from tests.conftest import REPO, needs_flag_gems, result, run_py

HEADER = "| case | native ms | untuned ms | tuned ms | untuned/native | tuned/native | tuned/untuned |"
SMALL = ["--device", "cpu", "--scale", "0.05", "--decode-batches", "1,3", "--prefill", "16,40",
         "--cache-len", "48", "--filled", "32", "--iters", "4", "--repeats", "3", "--warmup", "1"]
CASES = ["decode_bs1", "decode_bs3", "prefill_16", "prefill_40"]


def drive(tmp_path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.benchmarks.e2e_llm", *SMALL, "--out-dir", str(tmp_path),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def table_rows(stdout: str, header: str = HEADER) -> list[list[str]]:
    """The body rows of the markdown table whose header line starts with `header`."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_native_on_cpu_and_a_failing_mode(tmp_path):
    """Native runs and is timed; untuned cannot run FlagGems without a GPU: reported, native kept."""
    p = drive(tmp_path, "--modes", "native,untuned", "--json-out", str(tmp_path / "e2e.jsonl"),
              "--table-out", str(tmp_path / "table.md"))
    assert p.returncode == 1, p.stdout + p.stderr  # one mode failed
    lines = (tmp_path / "e2e.jsonl").read_text().splitlines()
    native, untuned = (json.loads(x) for x in lines)
    assert native["mode"] == "native" and native["status"] == "ok", native.get("error")
    assert native["device"] == "cpu" and native["rc"] == 0
    env = native["environment"]
    assert {"gpu_name", "torch", "triton", "flag_gems", "transformers"} <= set(env)
    assert list(native["cases"]) == CASES
    for name, case in native["cases"].items():
        assert case["timing"] == "cpu-eager" and case["ms"] > 0, case
        assert len(case["samples_ms"]) == 3
        assert case["autotunes"]["timed"] == 0 and case["autotunes"]["before_timing"] == 0
    assert len(native["cases"]["decode_bs3"]["top1"]) == 3
    assert native["cases"]["prefill_40"]["tokens"] == 40 and native["cases"]["prefill_40"]["kind"] == "prefill"
    assert native["autotune"]["installed"] and native["log_libtuner_autotunes"] == 0
    assert {"build", "prepare", "total"} <= set(native["wall_s"])
    assert untuned["status"] == "error" and "CUDA GPU" in untuned["error"] and untuned["cases"] == {}

    assert (tmp_path / "table.md").read_text().strip() in p.stdout
    rows = table_rows(p.stdout)
    assert [r[0] for r in rows] == ["decode bs=1 [cpu-eager]", "decode bs=3 [cpu-eager]",
                                    "prefill S=16 [cpu-eager]", "prefill S=40 [cpu-eager]"]
    for r, name in zip(rows, CASES):
        assert float(r[1]) == round(native["cases"][name]["ms"], 3)
        assert r[2:] == ["error", "not run", "—", "—", "—"]
    modes = table_rows(p.stdout, "| mode | status |")
    assert [m[:2] for m in modes] == [["native", "ok"], ["untuned", "error"]]
    assert [m[3:5] for m in modes] == [["0", "0"], ["0", "0"]]  # autotunes before / during timing


def test_timed_out_mode_is_reported(tmp_path):
    p = drive(tmp_path, "--modes", "native", "--timeout", "native=1", timeout=60)
    assert p.returncode == 1, p.stderr
    res = json.loads(p.stdout.splitlines()[0])
    assert res["mode"] == "native" and res["status"].startswith("timeout")
    assert all(r[1] == "timed out" for r in table_rows(p.stdout))


@needs_flag_gems
def test_counter_sees_a_flaggems_libtuner_miss_once(tmp_path):
    """FlagGems' own Hopper mm LibTuner (CPU import): one cache miss is one autotune event with
    FlagGems' key; the hit afterwards adds nothing. Stand-ins: the timing function and the launch."""
    out = run_py("""
        import json
        from tuner.benchmarks.e2e_llm import AutotuneCounter
        counter = AutotuneCounter(); counter.install()
        from tuner.inject.flaggems_cache import locate_mm_module, locate_mm_tuners, _runtime_args
        mod = locate_mm_module(); t = locate_mm_tuners()["fg_tma"]
        class Launch:  # stands in for the CUDA launch only
            def run(self, *args, **kwargs):
                pass
        t.fn = Launch()
        t.do_bench = lambda fn, quantiles=None: (fn(), [1.0, 1.0, 1.0])[1]
        a = _runtime_args(mod, "fg_tma", 5, 4608, 3584, "bf16", "col")
        names = t.arg_names[:12]
        def call():
            t.run(*[a[n] for n in names], **{k: a[k] for k in a if k not in names})
        with counter.at("warmup", "mm"):
            call()
        with counter.at("timed", "mm"):
            call()
        s = counter.summary()
        print("RESULT", json.dumps({"s": s, "key": repr(t.get_key({k: a[k] for k in a if k in t.arg_names})),
                                    "n": len(t.configs)}))
    """.replace("\n        ", "\n"), {"GEMS_VENDOR": "nvidia", "ARCH": "sm_90",
                                       "HOME": str(tmp_path), "FLAGGEMS_DB_URL": f"sqlite:///{tmp_path / 'fg.db'}"})
    r = result(out)
    s = r["s"]
    assert (s["warmup"], s["timed"], s["libtuner"]) == (1, 0, 1), s
    (event,) = s["events"]
    assert event["kernel"] == "mm_kernel_general_host_tma" and event["key"] == r["key"]
    assert event["benchmarked"] == r["n"] > 1 and event["case"] == "mm" and event["seconds"] is not None


@needs_flag_gems
def test_tuned_mode_applies_the_db_as_a_runtime_folder(tmp_path):
    """The tuned mode's setup on the committed H100 serve results (a copy: opening migrates it):
    the records serve would select, written to a runtime folder and applied in-process."""
    db = tmp_path / "serve.db"
    shutil.copy(REPO / "tuner/benchmarks/results/serve/final/serve.db", db)
    out = run_py(f"""
        import json, logging, sys
        from pathlib import Path
        from tuner.benchmarks.e2e_llm import _enable_flaggems, parse_args
        logging.basicConfig(level=logging.INFO)
        opts = parse_args(["--mode", "tuned", "--db", {str(db)!r}, "--allow-foreign"])
        assert "flag_gems" not in sys.modules
        info = _enable_flaggems(opts, Path({str(tmp_path)!r}), 2048)
        print("RESULT", json.dumps(info))
    """.replace("\n        ", "\n"), {"GEMS_VENDOR": "nvidia", "ARCH": "sm_90", "HOME": str(tmp_path)})
    info = result(out)
    assert info["records"] == 7 and info["exclude_ops"] == ["mul"]
    assert info["plugin"]["mm_flaggems"] == 6  # the fg_* winners; split-K needs a GPU
    assert info["flaggems_db_url"] == f"sqlite:///{tmp_path / 'runtime' / 'flaggems_cache.db'}"
    assert "tuner plugin: 7 records from the DB" in out
