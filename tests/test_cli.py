"""CLI errors a user can cause: one sentence, exit code 2, nothing written."""

import sqlite3

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def tune(*args):
    return runner.invoke(app, ["tune", *args])


@pytest.mark.parametrize("args,needle", [
    (["--op", "conv", "--shape", "1,2,3"], "unknown op 'conv'"),
    (["--op", "mm", "--shape", "1,2"], "must be M,N,K"),
    (["--op", "mm", "--shape", "a,b,c"], "must be integers"),
    (["--op", "mm", "--shapes", "nope"], "unknown shape preset 'nope'"),
    (["--op", "mm"], "at least one --shape"),
    (["--op", "mm", "--shape", "1,64,64", "--sampler", "bayes"], "unknown sampler"),
    (["--op", "mm", "--shape", "1,64,64", "--device", "cuda"], "needs an NVIDIA GPU"),
    (["--op", "mm", "--shape", "1,64,64", "--device", "cpu", "--dtype", "bf16"], "computes bf16 wrongly"),
    (["--op", "mm", "--shape", "1,64,64", "--trials", "0"], "--trials must be a positive"),
    (["--op", "fused_moe", "--shape", "8,64,64,2,4", "--device", "cpu"], "no CPU implementation"),
])
def test_tune_user_errors(tmp_path, args, needle):
    db = tmp_path / "t.db"
    res = tune(*args, "--db", str(db))
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert len(res.output.strip().splitlines()) == 1  # one sentence, no traceback
    assert not db.exists()  # nothing written


def test_unreadable_and_foreign_databases(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all")
    res = tune("--op", "mm", "--shape", "1,64,64", "--device", "cpu", "--db", str(junk))
    assert res.exit_code == 2 and "not a SQLite database" in res.output
    assert junk.read_bytes() == b"not a database at all"

    foreign = tmp_path / "shop.db"
    with sqlite3.connect(foreign) as c:
        c.execute("create table orders (id integer)")
    res = tune("--op", "mm", "--shape", "1,64,64", "--device", "cpu", "--db", str(foreign))
    assert res.exit_code == 2 and "belongs to another program" in res.output
    with sqlite3.connect(foreign) as c:
        assert {r[0] for r in c.execute("select name from sqlite_master")} == {"orders"}


def test_db_show_on_missing_database(tmp_path):
    res = runner.invoke(app, ["db", "show", "--db", str(tmp_path / "none.db")])
    assert res.exit_code == 2 and "no tuner database" in res.output
    assert not (tmp_path / "none.db").exists()


def test_tune_then_show_json(tmp_path):
    import json

    db = str(tmp_path / "t.db")
    res = tune("--op", "mm", "--shape", "4,64,64", "--trials", "2", "--device", "cpu", "--db", db, "--json")
    assert res.exit_code == 0, res.output
    (out,) = json.loads(res.output[res.output.index("["):])
    assert out["stored"] and out["timing"] == "interpreter-wall"
    shown = json.loads(runner.invoke(app, ["db", "show", "--db", db, "--json"]).output)
    assert shown[0]["key"] == {"M": 4, "N": 64, "K": 64, "BT": 1} and shown[0]["environment"]["device"] == "cpu"


def test_ops_explains_every_key_field_in_80_columns():
    res = runner.invoke(app, ["ops"])
    assert res.exit_code == 0
    assert max(len(line) for line in res.output.splitlines()) <= 80
    assert "BT       1: B is an N x K weight transposed" in res.output
    for op in ("mm", "addmm", "bmm", "fused_moe", "attention"):
        assert f"\n{op}: " in f"\n{res.output}"
    # the presets `tune --shapes` takes, names never cut at a hyphen
    assert "--shapes minicpmo-llm (30 keys), minicpmo-resampler (4 keys), vllm-tp1 (28" in res.output
    assert "minicpmo-llm (1 key)" in res.output and "vllm-\n" not in res.output
    assert "  dtypes bf16, fp16, fp32 (default bf16)" in res.output  # mm's
    assert "  dtypes fp8_w8a8 (default fp8_w8a8)\n  not served: no serve-time path" in res.output  # scaled_mm's


def test_every_command_help_has_an_example():
    from typer.main import get_command

    def leaves(cmd, prefix=()):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from leaves(sub, (*prefix, name)) if hasattr(sub, "commands") else [((*prefix, name), sub)]

    for path, sub in leaves(get_command(app)):
        assert "Example" in (sub.help or ""), " ".join(path)
        assert "Example" in runner.invoke(app, [*path, "--help"]).output, " ".join(path)


def test_command_lists_wrap_whole_sentences_in_80_columns():
    """Typer's Rich mode kept each docstring's line breaks in the command list: at 80 columns
    'measure each safely in a' / 'worker process, check it' / 'against ...' (rows cut short)."""
    for args in ([], ["db"]):
        res = runner.invoke(app, [*args, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert res.exit_code == 0 and max(len(line) for line in res.output.splitlines()) <= 80
        rows = [line.strip("│ ") for line in res.output.splitlines() if line.startswith("│ ")]
        text = " ".join(" ".join(rows).split())
        group = app if not args else next(g.typer_instance for g in app.registered_groups if g.name == "db")
        for command in group.registered_commands:  # each summary whole, wrapped only by the table
            assert command.short_help and " ".join(command.short_help.split()) in text, command.short_help
        lines = [line for line in res.output.splitlines() if line.startswith("│ ")]
        for a, b in zip(lines, lines[1:]):  # a row continued below is full: the next word did not fit
            if b.startswith("│    ") and b.strip("│ "):
                assert len(a.rstrip(" │")) + 1 + len(b.strip("│ ").split()[0]) > len(a) - 2, (a, b)
    res = runner.invoke(app, ["--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert "worker process, check it against the native result" in " ".join(
        line.strip("│ ") for line in res.output.splitlines())


@pytest.mark.parametrize("args, words", [
    (["--shape", "100000000,100000000,100000000"], "GiB for one set of inputs"),
    (["--shape", "1,64,64", "--patience", "0"], "--patience must be a positive number"),
    (["--shape", "1,64,64", "--compile-workers", "-1"], "--compile-workers must be 0 (off) or a positive"),
    (["--shape", "1,64,64", "--workers", "0"], "--workers must be 1 or more"),
    (["--shape", "1,64,64", "--gpus", "0,x"], "--gpus must be comma-separated GPU indices"),
    (["--shape", "1,64,64", "--gpus", "1,1"], "--gpus must name each GPU once"),
    (["--shape", "1,64,64", "--gpus", "0"], "--gpus needs --device cuda"),
    (["--shape", "1,64,64", "--workers", "2", "--trials", "0"], "--trials must be a positive number"),
])
def test_tune_refuses_before_writing(tmp_path, args, words):
    db = tmp_path / "t.db"
    res = tune("--op", "mm", "--device", "cpu", "--db", str(db), *args)
    assert res.exit_code == 2 and words in res.output, res.output
    assert not db.exists()


def test_empty_db_option_is_refused(tmp_path):
    res = runner.invoke(app, ["db", "show", "--db", ""])
    assert res.exit_code == 2 and "--db is empty" in res.output


def test_ctrl_c_prints_one_line_and_leaves_nothing_running(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: exit 130, one sentence, no
    traceback from the tune process or its worker, no trial left RUNNING, the one in flight queued."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from collections import Counter
    from pathlib import Path

    import optuna

    from tuner.store import optuna_storage

    repo = Path(__file__).resolve().parents[1]
    db = tmp_path / "c.db"
    proc = subprocess.Popen([sys.executable, str(repo / "cli.py"), "tune", "--op", "mm", "--shape", "16,256,512",
                             "--trials", "200", "--device", "cpu", "--db", str(db)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, url, summary, storage = time.monotonic() + 180, f"sqlite:///{db}", None, None
    while time.monotonic() < deadline:  # wait until a config has been measured
        time.sleep(1)
        if storage is None and db.exists():
            # this poller is one more process opening the fresh file: a plain RDBStorage here
            # raced the tune's schema setup (duplicate alembic_version row, CI of 8410493)
            storage = optuna_storage(url)
        summaries = optuna.get_all_study_summaries(storage) if storage is not None else []
        if summaries:
            summary = summaries[0]
            done = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if done:
                break
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err and "interrupted: every config measured so far is kept" in err
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    states = Counter(t.state.name for t in study.trials)
    assert states["RUNNING"] == 0 and states["COMPLETE"] >= 1


def test_ctrl_c_stops_every_worker(tmp_path):
    """`--workers 2`: the SIGINT reaches the parent (the children run in their own sessions), which
    passes one to each child: exit 130, one sentence, no traceback, nothing left RUNNING, every
    claim held by a measured config (those in flight were given back and queued again)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import optuna
    from optuna.trial import TrialState

    from db import open_database
    from db.models import Claim
    from tuner.store import optuna_storage

    repo = Path(__file__).resolve().parents[1]
    db = tmp_path / "w.db"
    proc = subprocess.Popen([sys.executable, str(repo / "cli.py"), "tune", "--op", "mm", "--shape", "16,256,512",
                             "--trials", "200", "--device", "cpu", "--workers", "2", "--db", str(db)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url, trials, deadline, storage = f"sqlite:///{db}", [], time.monotonic() + 300, None
    while time.monotonic() < deadline and len([t for t in trials if t.state == TrialState.COMPLETE]) < 2:
        time.sleep(1)
        if storage is None and db.exists():
            storage = optuna_storage(url)  # race-safe: the tune processes may be creating the schema
        summaries = optuna.get_all_study_summaries(storage) if storage is not None else []
        if len(summaries) == 1:
            summary = summaries[0]
            trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err and err.count("interrupted:") == 1
    trials = optuna.load_study(study_name=summary.study_name, storage=url).get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    measured = {t.number for t in trials if t.user_attrs.get("status") in ("ok", "failed")}
    d = open_database(str(db))
    with d.session() as s:
        assert {c.trial_number for c in s.query(Claim)} == measured
    d.dispose()


@pytest.mark.parametrize("args, words", [
    (["serve", "/nonexistent", "--port", "99999"], "'--port': Input should be less than or equal to 65535"),
    (["serve", "/nonexistent", "--port", "0"], "'--port': Input should be greater than or equal to 1"),
    (["bench", "/nonexistent", "--port", "70000"], "'--port': Input should be less than or equal to 65535"),
    (["check", "--jobs", "0"], "'--jobs': Input should be greater than or equal to 1"),
    (["profile", "--top", "0"], "'--top': Input should be greater than or equal to 1"),
    (["tune", "--op", "mm", "--shape", "1,64,64", "--top", "3"], "give --from-profile PROFILE_ID too"),
])
def test_numbers_out_of_range_are_refused_before_anything_runs(args, words):
    """An impossible port, no op subprocesses, no rows, --top without the profile it limits: each
    was accepted (exit 0, or a failure later on)."""
    res = runner.invoke(app, args, terminal_width=200)
    assert res.exit_code == 2 and words in " ".join(res.output.split()), res.output


def test_db_show_refuses_an_unknown_op(tmp_path):
    res = runner.invoke(app, ["db", "show", "--op", "nosuch", "--db", str(tmp_path / "none.db")])
    assert res.exit_code == 2 and "unknown op 'nosuch'; ops: mm," in res.output


def test_serve_on_the_network_without_a_key_warns(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNER_API_KEY", raising=False)
    args = ["serve", "Qwen/x", "--dry-run", "--runtime-dir", str(tmp_path / "rt"), "--db", str(tmp_path / "n.db")]
    open_ = runner.invoke(app, [*args, "--host", "0.0.0.0"], terminal_width=200)
    assert open_.exit_code == 0 and "warning: the engine listens on 0.0.0.0 without an API key" in open_.output
    local = runner.invoke(app, args, terminal_width=200)
    assert local.exit_code == 0 and "warning" not in local.output
