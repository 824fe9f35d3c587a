"""A database password (a real PostgreSQL with password authentication) never appears in what
tuner prints, in the files it writes, nor in what it stores: tune with several workers (their
request travels on stdin, not the command line), db show, serve's runtime folder, a wrong
password's error."""

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import MetaData, create_engine, select

REPO = Path(__file__).resolve().parents[1]


def _tuner(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "PYTHONWARNINGS": "ignore"}
    env.pop("TUNER_DB_URL", None)
    return subprocess.run([sys.executable, "-c", "from cli import app; app()", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _files_text(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_a_password_never_appears(pg_url, pg_cluster, tmp_path):
    password = pg_cluster.password
    assert password in pg_url
    home = tmp_path / "home"
    home.mkdir()
    runs = [
        _tuner(home, "tune", "--op", "mm", "--device", "cpu", "--dtype", "fp16", "--shape", "16,32,32",
               "--trials", "2", "--workers", "2", "--db", pg_url),
        _tuner(home, "db", "show", "--db", pg_url),
        _tuner(home, "db", "show", "--json", "--db", pg_url),
        _tuner(home, "serve", "some/model", "--use-tuned", "--allow-foreign", "--dry-run",
               "--runtime-dir", str(tmp_path / "runtime"), "--db", pg_url),
    ]
    assert [r.returncode for r in runs] == [0] * 4, [r.stderr[-2000:] for r in runs]
    wrong = _tuner(home, "tune", "--op", "mm", "--device", "cpu", "--shape", "16,32,32",
                   "--db", pg_url.replace(password, password[::-1]))
    assert wrong.returncode == 2 and "***" in wrong.stderr and password[::-1] not in wrong.stderr
    for r in runs:
        assert password not in r.stdout + r.stderr
    assert "M=16,N=32,K=32" in runs[2].stdout  # the tune stored its result
    assert (tmp_path / "runtime").is_dir() and password not in _files_text(tmp_path)
    # nor in what the database holds (run rows, Optuna's attributes)
    engine = create_engine(pg_url)
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as c:
        stored = "".join(str(row) for table in meta.sorted_tables for row in c.execute(select(table)))
    engine.dispose()
    assert "tuner_best_configs" in meta.tables and password not in stored
