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
                        "mm,scaled_mm", str(db)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.startswith("| mm |") or line.startswith("| scaled_mm |")]
    assert len(rows) == 2 and "| 16 | 64 | 64 |" in rows[1]
    # fp8 weights are one byte: 64 x 64 B read per call, over the tuned time, against 1 GB/s
    shown = json.loads(subprocess.run([sys.executable, "cli.py", "db", "show", "--db", str(db), "--json"], cwd=REPO,
                                      capture_output=True, text=True, timeout=120).stdout)
    fp8 = next(r for r in shown if r["kernel"] == "scaled_mm")
    assert f"{64 * 64 / (fp8['time_us'] * 1e-6) / 1e9:.0%}" in rows[1]
    assert "Keys: 2; mm and addmm: 1." in p.stdout and "- scaled_mm: geomean" in p.stdout
    assert "fast accumulation" not in p.stdout  # a CPU tune has no fast-accumulation baseline
