"""What the CLI prints, at 80 columns, from a real recorded database (the H200's vLLM decode keys)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
H200_DB = REPO / "tuner" / "benchmarks" / "results" / "vllm" / "tune_keys" / "vllm_keys.db"


def _cli(*args, columns="80"):
    env = {**os.environ, "COLUMNS": columns}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_db_show_at_80_columns_shows_whole_keys(tmp_path):
    db = tmp_path / "h200.db"
    shutil.copy(H200_DB, db)  # opening may migrate: never the committed file
    r = _cli("db", "show", "--db", str(db))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in r.stdout
    keys = [",".join(str(v) for v in rec["key"].values())
            for rec in json.loads(_cli("db", "show", "--db", str(db), "--json").stdout)]
    assert len(keys) == 12
    for key in keys:  # each key whole at the start of its row
        assert any(line.split() and line.split()[0] == key for line in lines), key
    assert "mm bf16 on NVIDIA H200 (cuda-graph): key M,N,K,BT, µs" in r.stdout


def test_tune_piped_prints_one_line_per_key_as_it_ends(tmp_path):
    """Not a terminal (a log, CI, the GPU host's runs): rich would draw its bars only at the end, so
    each key gets one plain line, before the results table."""
    r = _cli("tune", "--op", "mm", "--shape", "16,32,32", "--shape", "16,64,32", "--device", "cpu",
             "--trials", "3", "--seed", "0", "--db", str(tmp_path / "t.db"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    keys = [i for i, line in enumerate(lines) if line.startswith(("[1/2] 16,32,32,1: ", "[2/2] 16,64,32,1: "))]
    assert len(keys) == 2, r.stdout
    assert all("3/3 measured, search best " in lines[i] and " µs, " in lines[i] for i in keys)
    assert keys[1] < next(i for i, line in enumerate(lines) if line.startswith("tuning results"))
    assert "━" not in r.stdout  # no bar drawn


def test_a_workers_key_line_counts_its_own_share_not_what_others_measured_before(capsys):
    """A worker that opens a study after another worker measured one of its configs: the study's
    count says 3 when this process measured 2; the worker's line says 2 (its share), a lone
    tune's line the study's 3 (a resumed study's progress). CI once saw shares summing to 5 of 4."""
    from tuner.report import _key_lines
    from tuner.tuning.search import Event, EventKind

    printed = {}
    for share in (False, True):
        lines = _key_lines(4, share)
        on_key, on_event = next(lines)
        on_key((16, 64, 32, 1), 0, 1)
        on_event(Event(EventKind.MEASURED, {}, 9.0, 9.0, measured=2, own=1))
        on_event(Event(EventKind.MEASURED, {}, 8.0, 8.0, measured=3, own=2))
        lines.close()
        printed[share] = capsys.readouterr().out
    assert "[1/1] 16,64,32,1: 3/4 measured, search best 8.00 µs" in printed[False]
    assert "[1/1] 16,64,32,1: 2/4 measured, search best 8.00 µs" in printed[True]


def test_short_config_shows_split_k_and_the_knobs_that_are_on():
    from tuner.report import short_config

    mm = dict(variant="splitk", BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=1, SPLIT_K=4, num_warps=4, num_stages=3,
              OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=0, EPILOGUE_SUBTILE=0)
    assert short_config(mm) == "splitk 16x64x128 g1 sk4 w4 s3"
    assert short_config(mm | {"FUSED_REDUCE": 1}) == "splitk 16x64x128 g1 sk4 w4 s3 fr"
    persistent = mm | dict(variant="persistent", SPLIT_K=1, OCCUPANCY=2, WARP_SPECIALIZE=1, EPILOGUE_SUBTILE=1)
    assert short_config(persistent) == "persistent 16x64x128 g1 sk1 w4 s3 o2 ws es"
    streamk = mm | dict(variant="streamk", SPLIT_K=1, SK_TAIL_ONLY=1, SK_SPLIT=4)
    assert short_config(streamk) == "streamk 16x64x128 g1 sk1 w4 s3 tail cut4"
    assert short_config(streamk | {"SK_TAIL_ONLY": 0, "SK_SPLIT": 0}) == "streamk 16x64x128 g1 sk1 w4 s3"
    fp8 = {k: v for k, v in mm.items() if k != "SPLIT_K"} | {"variant": "persistent"}  # scaled_mm has no SPLIT_K
    assert short_config(fp8) == "persistent 16x64x128 g1 w4 s3"
    assert short_config({"x": 1}) == "x=1" and short_config(None) == "-"
    # addmm's and bmm's spaces name their tiles after FlagGems' kernels
    addmm = dict(variant="persistent", BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64, GROUP_M=4, num_warps=8,
                 num_stages=3, EPILOGUE_SUBTILE=1, HOST_DESC=1)
    assert short_config(addmm) == "persistent 128x256x64 g4 w8 s3 es hd"
    assert short_config(dict(variant="fg_bmm", TILE_M=16, TILE_N=32, TILE_K=128, GROUP_M=1, num_warps=4,
                             num_stages=5)) == "fg_bmm 16x32x128 g1 w4 s5"


SESSION13 = REPO / "tuner" / "benchmarks" / "results" / "gemm_h200" / "session13" / "gemm.db.xz"


def test_db_show_says_where_serving_sends_each_gemm_key(tmp_path):
    """The H200's 49-key set (session 13): each GEMM row says what `tuner serve --use-tuned` does with
    the key at the given --route-within; gate_up at M=4096 (1.028x cuBLAS) moves to tuner's kernel
    between 1.02 and 1.03, down at M=4096 (0.90x) runs eagerly too, a K x N key is never routed."""
    import lzma

    db = tmp_path / "gemm.db"
    db.write_bytes(lzma.decompress(SESSION13.read_bytes()))

    def rows(within):
        r = _cli("db", "show", "--op", "mm", "--db", str(db), "--route-within", within, columns="200")
        assert r.returncode == 0, r.stderr
        out, key = {}, None
        for line in r.stdout.splitlines():  # a key's row, then its config's and route's lines
            words = line.split()
            if words and words[0].count(",") == 3:
                key = words[0]
            if key and words:
                out[key] = out.get(key, "") + " " + " ".join(words)
        return {k: v.split("serves: ")[1] for k, v in out.items()}

    at1, at102, at103 = rows("1.0"), rows("1.02"), rows("1.03")
    assert at1["4096,37888,3584,1"] == at102["4096,37888,3584,1"] == "native"
    assert at103["4096,37888,3584,1"] == "persistent, graphs + eager, this M only"  # not the 3305-row chunk
    assert at1["4096,3584,18944,1"] == "persistent, graphs + eager, this M only"
    assert at1["1,37888,3584,1"] == "flaggems, graphs only"  # a 5 us win: not worth FlagGems' eager launch
    assert at1["640,3584,3584,0"] == "not routed (B stored K x N)"
    r = _cli("db", "show", "--db", str(db), "--route-within", "3")
    assert r.returncode == 2 and "--route-within takes a factor from" in r.stderr
    r = _cli("db", "show", "--op", "addmm", "--db", str(db))  # at 80 columns: nothing wider, the route folds in
    assert r.returncode == 0 and max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "persistent 128x256x64" in r.stdout and "BLOCK_SIZE_M" not in r.stdout


def _render_at_80(fn, *args) -> str:
    import io

    from rich.console import Console

    from tuner import report

    saved = report.console
    report.console = Console(width=80, file=io.StringIO(), color_system=None)
    try:
        fn(*args)
        return report.console.file.getvalue()
    finally:
        report.console = saved


def test_profile_and_check_tables_at_80_columns_keep_keys_numbers_and_brackets_whole():
    """Eleven columns folded into five characters each made `tuner profile` unreadable at 80
    columns: the op's dtype, calls, shapes and kernel now sit on lines of their own, numbers never
    wrap, and text in brackets (shapes, an error's "[rank0]") is printed, not taken for markup.
    The H100 run's recorded profile and check (results/profile)."""
    from tuner import report

    recorded = REPO / "tuner" / "benchmarks" / "results" / "profile"
    outcome = json.loads((recorded / "profile-text.json").read_text())
    out = _render_at_80(report.profile_tables, outcome)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    first = outcome["modes"][0]["rows"][0]  # aten::mm 8x3584 @ 3584x18944, 224 calls
    for whole in (f"aten::mm {first['dtype']} · 224 calls", "M=8 N=18944 K=3584", first["shapes"],
                  report._us(first["total_us"]), f"{first['share']:.1%}"):
        assert any(whole in line for line in lines), (whole, out)
    check = json.loads((recorded / "check_text_e2e.json").read_text())
    check["results"].append({"op": "aten::_softmax", "gems_fn": "softmax", "inputs": "bf16[1, 28, 512, 512]",
                             "status": "crash", "detail": "[rank0] RuntimeError: CUDA error: an illegal memory access"})
    out = _render_at_80(report.check_table, check)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    for whole in ("mul.Tensor (mul)", "mismatch", "5.35e+00", "1.00e+00", "[rank0] RuntimeError"):
        assert any(whole in line for line in lines), (whole, out)
    body = lines[next(i for i, line in enumerate(lines) if "───" in line) + 1:]
    rows = [line for line in body if " pass " in line or " mismatch " in line or " crash " in line]
    assert "crash" in rows[0] and "mismatch" in rows[1] and all("pass" in r for r in rows[2:])  # failures first


def test_the_tune_table_says_when_the_database_kept_an_earlier_faster_row():
    """Session 17: a re-tune of the resampler's 640-row key printed its winner (32.5 µs) while the
    database kept an earlier faster row (32.4 µs); the table now says so under that key."""
    from tuner import report
    from tuner.tuning.flow import KeyResult
    from tuner.tuning.measurer import Setup
    from tuner.tuning.search import Outcome

    def result(stored: bool, confirmed: bool = True) -> KeyResult:
        o = Outcome(study_name="s", setup=Setup(timing="cuda-graph", baselines_us={"native": 24.2}),
                    best_config={"variant": "fg_tma", "BLOCK_M": 64}, best_us=32.5, best_rel_error=0.0,
                    best_max_abs_error=0.0, measured=164, trials_total=164, stop_reason="timeout",
                    timing="cuda-graph", confirmed=confirmed)
        return KeyResult((640, 3584, 3584, 1), o, stored)

    kept = _render_at_80(report.tune_table, [result(False)])
    assert "640,3584,3584,1: not stored: the database keeps a faster" in kept
    assert "not stored" not in _render_at_80(report.tune_table, [result(True)])
    assert "keeps its confirmed row" in " ".join(_render_at_80(report.tune_table, [result(False, False)]).split())
    assert max(len(line) for line in kept.splitlines()) <= 80
