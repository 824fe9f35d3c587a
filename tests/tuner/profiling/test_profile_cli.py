"""`tuner profile` / `tuner check` / `tune --from-profile` through the CLI: user errors are one
sentence, exit code 2, and leave nothing stored."""

import json
import sqlite3

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli import app
from tuner.profiling.workload import build_model

runner = CliRunner()
SMALL = ["--scale", "0.05", "--device", "cpu", "--prompt-tokens", "8", "--decode-batches", "1", "--decode-steps", "1"]


def _profile_rows(db):
    if not db.exists():
        return 0
    with sqlite3.connect(db) as c:
        if not c.execute("select name from sqlite_master where name='tuner_profile_runs'").fetchall():
            return 0
        return c.execute("select count(*) from tuner_profile_runs").fetchone()[0] + \
            c.execute("select count(*) from tuner_hot_ops").fetchone()[0]


def _checkpoint(folder, scale, drop=0):
    model = build_model(scale, torch.float32, "cpu", components=["llm"])
    sd = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    for k in list(sd)[:drop]:
        del sd[k]
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    return folder


def _error(result):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    # one sentence, last; before it at most the progress lines ("building the model...")
    assert errors == [lines[-1]] and lines[-1].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[-1]


@pytest.mark.parametrize("args, words", [
    (["--workload", "video"], "unknown workload 'video'"),
    (["--scale", "0"], "scale must be a number in (0, 1]"),
    (["--scale", "1.5"], "scale must be a number in (0, 1]"),
    (["--device", "tpu"], "unknown device"),
    (["--decode-batches", "1,x"], "comma-separated integers"),
    (["--decode-batches", "0"], "must be positive"),
    (["--weights", "/nonexistent/weights"], "does not exist"),
])
def test_profile_user_errors(tmp_path, args, words):
    db = tmp_path / "t.db"
    res = runner.invoke(app, ["profile", "--workload", "text", *SMALL, "--db", str(db), *args])
    assert words in _error(res)
    assert _profile_rows(db) == 0


def test_profile_weight_errors_store_nothing(tmp_path):
    db = tmp_path / "t.db"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.safetensors" in _error(runner.invoke(app, ["profile", "--workload", "text", *SMALL, "--db", str(db),
                                                            "--weights", str(empty)]))
    part = _checkpoint(tmp_path / "part", 0.05, drop=3)
    msg = _error(runner.invoke(app, ["profile", "--workload", "text", *SMALL, "--db", str(db), "--weights", str(part)]))
    assert "incomplete" in msg and "3 of" in msg
    small = _checkpoint(tmp_path / "small", 0.02)
    msg = _error(runner.invoke(app, ["profile", "--workload", "text", *SMALL, "--db", str(db), "--weights", str(small)]))
    assert "wrong shape" in msg and "scale 0.05" in msg
    assert _profile_rows(db) == 0


def test_profile_json_then_tune_keys_and_unknown_id(tmp_path):
    db = tmp_path / "t.db"
    trace = tmp_path / "tr.json.gz"
    res = runner.invoke(app, ["profile", "--workload", "text", *SMALL, "--db", str(db), "--trace", str(trace),
                              "--top", "5", "--json", "--no-check"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["modes"]) == 1 and len(out["modes"][0]["rows"]) == 5 and trace.exists()
    assert "scale 0.05" in out["label"] and any("FlagGems profile skipped" in n for n in out["notes"])
    assert _profile_rows(db) > 5
    res = runner.invoke(app, ["tune", "--op", "mm", "--from-profile", "42", "--top", "2", "--db", str(db)])
    assert "no stored profile has id '42'" in _error(res)


@pytest.mark.parametrize("candidate, words", [
    ("nosuch:fn", "cannot import nosuch"),
    ("json", "must be module:function"),
    ("json:nosuch", "json has no nosuch"),
    ("json:__doc__", "is not a function"),
])
def test_check_refuses_a_candidate_it_cannot_load_before_running(tmp_path, candidate, words):
    """A misspelt --candidate was found in each op's subprocess: 43 crashes in 2 min 43 s, exit 0,
    and an exclude list of 16 ops stored."""
    db = tmp_path / "t.db"
    for command in ("check", "profile"):
        res = runner.invoke(app, [command, "--workload", "text", *SMALL, "--device", "cpu", "--db", str(db),
                                  "--candidate", candidate])
        assert words in _error(res), command
    assert not db.exists()


def test_check_without_gpu_or_candidate_is_refused(tmp_path):
    db = tmp_path / "t.db"
    res = runner.invoke(app, ["check", "--workload", "text", *SMALL, "--db", str(db)])
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert "cannot run here" in _error(res)
    assert not db.exists()


def test_check_with_a_crashing_candidate_stores_the_exclude_list(tmp_path):
    """Harness test on CPU: the candidate is tests/tuner/profiling/check_candidates.dies_on_mm (real code
    that kills its process on matrix products), not FlagGems."""
    db = tmp_path / "t.db"
    res = runner.invoke(app, ["check", "--workload", "text", "--scale", "0.02", "--device", "cpu", "--prompt-tokens", "4",
                              "--decode-batches", "1", "--decode-steps", "1", "--jobs", "2", "--db", str(db), "--json",
                              "--candidate", "tests.tuner.profiling.check_candidates:dies_on_mm"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert "mm" in rep["exclude"] and "addmm" in rep["exclude"] and rep["stored_exclude_list"] == rep["exclude"]
    assert rep["counts"]["pass"] > 5 and rep["e2e"]["status"].startswith("skipped")
    with sqlite3.connect(db) as c:
        rows = c.execute("select status, count(*) from tuner_consistency_results group by status").fetchall()
    assert dict(rows)["crash"] == rep["counts"]["crash"]
