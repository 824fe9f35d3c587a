"""The GEMM report over a real tuner database: mm and fp8 scaled_mm keys tuned on the CPU."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_report_has_a_row_per_key_and_the_summary(tmp_path):
    db = tmp_path / "g.db"
    for op, shape in (("mm", "16,32,32"), ("scaled_mm", "16,64,64")):
        p = subprocess.run([sys.executable, "cli.py", "tune", "--op", op, "--shape", shape, "--device", "cpu",
                            "--trials", "2", "--db", f"sqlite:///{db}"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr
    bw = tmp_path / "bw.json"
    bw.write_text(json.dumps({"bandwidth_Bps": 1e9}))
    p = subprocess.run([sys.executable, "-m", "tuner.benchmarks.report_mm", "--copy-bw", str(bw), "--ops",
                        "mm,addmm,scaled_mm", str(db)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.startswith("| mm |") or line.startswith("| scaled_mm |")]
    assert len(rows) == 2 and "| 16 | 64 | 64 |" in rows[1]
    # fp8 weights are one byte: 64 x 64 B read per call, over the tuned time, against 1 GB/s
    shown = json.loads(subprocess.run([sys.executable, "cli.py", "db", "show", "--db", str(db), "--json"], cwd=REPO,
                                      capture_output=True, text=True, timeout=120).stdout)
    fp8 = next(r for r in shown if r["kernel"] == "scaled_mm")
    assert f"{64 * 64 / (fp8['time_us'] * 1e-6) / 1e9:.0%}" in rows[1]
    assert "Keys: 2; mm and addmm: 1." in p.stdout and "- scaled_mm: geomean" in p.stdout
    assert "- addmm:" not in p.stdout  # asked for, but no addmm key in the database: no "geomean nan" line
    assert "fast accumulation" not in p.stdout  # a CPU tune has no fast-accumulation baseline


def test_report_of_the_recorded_h200_set_keeps_bmm_apart(tmp_path):
    """session 12's H200 database (mm, addmm and bmm tuned beside cuBLAS): bmm's rows name their
    layer and batch, and stay out of the mm/addmm summary, which reads as that session's report."""
    import lzma

    results = REPO / "tuner/benchmarks/results/gemm_h200/session12"
    db = tmp_path / "gemm.db"
    db.write_bytes(lzma.decompress((results / "gemm.db.xz").read_bytes()))
    p = subprocess.run([sys.executable, "-m", "tuner.benchmarks.report_mm", "--copy-bw",
                        str(results / "tune/copy_bw.json"), "--ops", "mm,addmm,bmm", str(db)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    bmm = [line for line in p.stdout.splitlines() if line.startswith("| bmm |")]
    assert len(bmm) == 4 and "| resampler k/v | 1024x10 | 3584 | 3584 |" in "".join(bmm)
    assert "| lm_head (prefill) | 1x1 | 151700 |" in "".join(bmm) and all("| n/a |" in b for b in bmm)
    assert "persistent 128x128x64" in "".join(bmm)  # TILE_M... shown as tiles
    assert "Keys: 41; mm and addmm: 37." in p.stdout
    assert "- bmm: geomean" in p.stdout and "not in the targets" in p.stdout
    # the summary line of the mm/addmm set is the tune step's own report (tune/REPORT.md)
    summary = next(line for line in p.stdout.splitlines() if line.startswith("Keys:")).split(". ", 1)[1]
    assert summary in (results / "tune/REPORT.md").read_text()


def test_layers_are_named_by_the_fields_that_tell_them_apart():
    from tuner.benchmarks.report_mm import layer_of

    assert layer_of({"M": 512, "N": 3584, "K": 3584, "BT": 1}) == "o"
    assert layer_of({"M": 640, "N": 3584, "K": 3584, "BT": 0}) == "resampler q/out/proj (kn)"  # o's N x K
    assert layer_of({"M": 640, "N": 3584, "K": 3584, "BT": 1}) == "resampler q/out/proj"
    assert layer_of({"BATCH": 64, "M": 10, "N": 3584, "K": 3584, "LAYOUT": 1}) == "resampler q"
    assert layer_of({"M": 10240, "N": 3584, "K": 1152, "BT": 1}) == "resampler kv_proj"
    assert layer_of({"BATCH": 1024, "M": 10, "N": 3584, "K": 3584, "LAYOUT": 1}) == "resampler k/v"
    assert layer_of({"M": 7, "N": 9, "K": 11, "BT": 1}) == "?"


def test_a_missing_copy_bandwidth_is_a_message_not_a_traceback(tmp_path):
    """gpu_queue ran it on every engine-only lease of session 14 without a copy_bw.json."""
    p = subprocess.run([sys.executable, "-m", "tuner.benchmarks.report_mm", "--copy-bw", str(tmp_path / "none.json"),
                        str(tmp_path / "gemm.db")], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no copy bandwidth in" in p.stderr and "copy_bw" in p.stderr
