"""`tuner report` from a real recorded database (H200, 2026-11-30: the 12 vLLM decode keys tuned,
their Optuna studies, a `tuner profile --engine vllm` run and a `tuner bench` of native vs tuned)."""
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuner.reporting import collect, page

DATA = Path(__file__).parent / "data" / "h200_run3.db"
REPO = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "h200.db"
    shutil.copy(DATA, path)  # opening may migrate: never the committed file
    return str(path)


def test_report_page_and_charts_from_a_recorded_database(db, tmp_path):
    pytest.importorskip("matplotlib")
    data = collect.collect(db)
    assert list(data.best) == [("mm", "NVIDIA H200")] and len(data.best["mm", "NVIDIA H200"]) == 12
    assert len(data.searches["mm"]) == 12 and all(s["curve"] for s in data.searches["mm"])
    (prof,) = data.profiles
    assert prof["workloads"] == "vllm:tuned" and prof["triton_share"] == pytest.approx(0.181, abs=0.01)
    assert {r["mode"] for r in data.bench} == {"native", "tuned"}
    path = page.write(data, tmp_path / "report")
    text = path.read_text()
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == ["bench.png", "profile_1.png", "search_mm.png", "speedup_mm_NVIDIA_H200.png"]
    for name in pngs:
        assert (path.parent / name).read_bytes()[:8] == PNG
        assert f'src="{name}"' in text
    assert "64,151744,3584,1" in text and "Triton share 18.1%" in text and "http" not in text


def test_best_so_far_counts_measurements_only():
    def trial(number, value, status="ok", duplicate=False):
        attrs = {"status": status, **({"duplicate": True} if duplicate else {})}
        return SimpleNamespace(number=number, value=value, user_attrs=attrs)

    trials = [trial(2, 9.0), trial(0, 12.0), trial(1, 50.0, status="mismatch"), trial(3, 9.0, duplicate=True),
              trial(4, 10.0)]
    assert collect.best_so_far(trials) == [12.0, 9.0, 9.0]


def test_cli_refuses_a_missing_or_empty_database(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, str(REPO / "cli.py"), "report", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    r = cli("--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "no tuner database" in r.stderr and not (tmp_path / "r").exists()
    empty = tmp_path / "empty.db"
    from db import open_database

    open_database(f"sqlite:///{empty}").dispose()  # a migrated tuner database with nothing in it
    r = cli("--db", str(empty), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "nothing stored yet" in r.stderr and not (tmp_path / "r").exists()
    assert sqlite3.connect(empty).execute("select count(*) from tuner_best_configs").fetchone() == (0,)


def test_cli_refuses_an_out_it_cannot_write(db, tmp_path):
    """--out naming a file (or a folder under one) was a FileExistsError traceback, exit 1."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    for out in (afile, afile / "sub"):
        r = subprocess.run([sys.executable, str(REPO / "cli.py"), "report", "--db", db, "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "cannot write the report into" in r.stderr and "Traceback" not in r.stderr
    assert afile.read_text() == "mine"


def test_a_two_engine_bench_shows_its_engines(db, tmp_path):
    """`tuner bench --engine vllm,flagscale` stored on top of the recorded database (its rows from the
    bench's own summary of mode results, tests/tuner/serving/test_bench_served.py): the report's table
    and chart name each row's engine; the recorded one-engine bench's section is as before."""
    pytest.importorskip("matplotlib")
    from db import bench_queries, open_database
    from db.models import Environment
    from tests.tuner.serving.test_bench_served import _two_engine_report

    single = collect.collect(db)
    assert [r["label"] for r in single.bench] == [r["mode"] for r in single.bench]
    one = page._bench_section(single, tmp_path)
    assert one[0].endswith("(vllm)</h2>") and "<th>engine</th>" not in one[-1]
    assert "<th>mode</th><th>concurrency</th><th>output tok/s</th><th>x native</th><th>start s</th>" in one[-1]

    rep = _two_engine_report()
    store = open_database(f"sqlite:///{db}")
    try:
        with store.session() as s:
            env_id = s.query(Environment.id).first()[0]  # the recorded H200's environment
            bench_queries.add_bench(s, environment_id=env_id, bench_id="bench-two", engine="vllm,flagscale",
                                    model="/tmp/ck", rows=rep["runs"])
            s.commit()
    finally:
        store.dispose()
    data = collect.collect(db)
    labels = [r["label"] for r in data.bench]
    assert len(set(labels)) == len(set(labels) & {f"{e}/{m}" for e in ("vllm", "flagscale")
                                                  for m in ("native", "untuned", "tuned")}) == 6
    path = page.write(data, tmp_path / "report")
    text = path.read_text()
    assert "<h2>Serving bench bench-two (vllm, flagscale)</h2>" in text
    assert "<th>engine</th><th>mode</th><th>concurrency</th><th>output tok/s</th><th>x native</th><th>x vllm</th>" \
        in text
    fs_tuned = next(r for r in data.bench if r["label"] == "flagscale/tuned" and r["concurrency"] == 1)
    cells = ["flagscale", "tuned", "1", f"{fs_tuned['output_tok_s']:.1f}", f"{fs_tuned['vs_native']:.3f}",
             f"{fs_tuned['vs_engine']:.3f}"]
    assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) in text
    assert text.count("<tr><td>vllm</td>") == text.count("<tr><td>flagscale</td>") == 6  # 3 modes x 2 concurrencies
    assert fs_tuned["vs_engine"] == pytest.approx(0.98)  # the bench's FlagScale ran at 0.98 of vLLM's pace
    assert (path.parent / "bench.png").read_bytes()[:8] == PNG
