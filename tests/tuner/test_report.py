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
