"""Several tune processes on one database (a SQLite file, then a real PostgreSQL): real `tuner
tune` processes under the Triton interpreter, on tiny keys with few trials (8 processes share
the machine's cores)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from db import open_database, queries
from db.models import Claim, TuningRun

REPO = Path(__file__).resolve().parents[3]
MEASURED = {"ok", "failed", "wrong", "crashed", "hang"}  # statuses of a config that was measured


def _cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, "-c", "from cli import app; app()", "tune", "--op", "mm", "--device", "cpu",
            "--dtype", "fp16", "--db", url, *args]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore", **extra}


def _tune(url: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(url, *args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _studies(url: str, storage=None) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = storage or optuna.storages.RDBStorage(url)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
            for s in optuna.get_all_study_summaries(storage)}


def _measured(trials) -> list[tuple[str, float | None]]:
    """(canonical config, µs) of every trial that measured its config (duplicates are not)."""
    return [(t.user_attrs["canonical"], t.value) for t in trials
            if t.user_attrs.get("status") in MEASURED and not t.user_attrs.get("duplicate")]


def _check_study(trials, budget: int) -> None:
    measured = [text for text, _ in _measured(trials)]
    assert len(measured) == len(set(measured)) == budget  # none twice, the budget exactly
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def _stored(url: str) -> dict[str, dict]:
    db = open_database(url)
    try:
        with db.session() as s:
            return {r["study_name"]: r for r in queries.records(queries.best_configs(s))}
    finally:
        db.dispose()


def test_eight_workers_on_one_key_measure_each_config_once(db_url):
    """`--workers 8` on a fresh database: 8 processes, one study, 8 configs measured in all."""
    t0 = time.monotonic()
    proc = _tune(db_url, "--shape", "16,32,32", "--trials", "8", "--workers", "8", "--seed", "5", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (result,) = json.loads(proc.stdout)
    (name, trials), = _studies(db_url).items()
    _check_study(trials, 8)
    assert result["measured"] == 8 and result["trials_total"] == 8
    db = open_database(db_url)
    with db.session() as s:
        assert s.query(Claim).count() == 8
        assert [r.status for r in s.query(TuningRun)] == ["done"] * 8
    db.dispose()
    # stored: the fastest of the workers' side-by-side passes (each re-timed the study's finalists)
    best = _stored(db_url)[name]
    assert best["confirmed"] and best["config"] == result["best_config"]
    assert best["time_us"] == pytest.approx(result["best_us"])
    print(f"8 workers, 1 key: {time.monotonic() - t0:.0f} s")


def test_eight_processes_on_two_keys_in_either_order(db_url):
    """8 separate `tuner tune` processes on one URL, half starting with each key."""
    a, b = "16,32,32", "16,64,32"
    procs = [subprocess.Popen(_cmd(db_url, "--shape", *(((a, "--shape", b) if i % 2 else (b, "--shape", a))),
                                   "--trials", "4", "--seed", str(i), "--json"),
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(8)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err[-3000:] for p, (_, err) in zip(procs, outs) if p.returncode]
    assert not any("Traceback" in err for _, err in outs)
    studies = _studies(db_url)
    assert len(studies) == 2
    stored = _stored(db_url)
    for name, trials in studies.items():
        _check_study(trials, 4)
        results = [r for out, _ in outs for r in json.loads(out) if r["study"] == name]
        fastest = min(results, key=lambda r: r["best_us"])
        assert stored[name]["confirmed"] and stored[name]["config"] == fastest["best_config"]
        assert stored[name]["time_us"] == pytest.approx(fastest["best_us"])


def _wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# a key whose configs take seconds each in the interpreter, so the watcher sees one in flight:
# 16,256,1024's 5 configs took 3.0-6.1 s each here (an 11.6 s window after the 2nd ended);
# 16,256,256's took 0.2-0.9 s (a 2 s window), and CI's watcher missed it twice on PostgreSQL
KILL_ARGS = ("--shape", "16,256,1024", "--trials", "5", "--seed", "2")


def _kill_one_mid_measurement(db_url: str, env: dict) -> tuple[str, list, set[str]]:
    """Start a tune and SIGKILL its process group (the host lost) once it has measured 2 configs
    and has one in flight: (study name, its trials before, the canonical configs in flight)."""
    storage = None

    def measured_and_running():
        nonlocal storage
        if victim.poll() is not None:  # ended before the watcher saw the state: say why, now
            err.seek(0)
            raise AssertionError(f"the tune to kill ended by itself (exit {victim.returncode}) before it had "
                                 f"2 configs measured and one in flight; its stderr:\n{err.read()[-3000:]}")
        try:
            storage = storage or optuna.storages.RDBStorage(db_url)
        except Exception:  # the victim is still creating the schema
            return False
        studies = _studies(db_url, storage)
        trials = next(iter(studies.values()), [])
        return (len(_measured(trials)) >= 2 and any(t.state == TrialState.RUNNING and t.user_attrs.get("canonical")
                                                   for t in trials))

    for _ in range(3):  # a trial told between the look and the kill leaves none in flight: kill again
        with tempfile.TemporaryFile("w+") as err:
            victim = subprocess.Popen(_cmd(db_url, *KILL_ARGS), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=err, start_new_session=True)
            try:
                _wait_for(measured_and_running, 300, "2 configs measured and one in flight")
            finally:
                with contextlib.suppress(ProcessLookupError):  # its group may be gone when it ended first
                    os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
        (name, before), = _studies(db_url).items()
        in_flight = {t.user_attrs["canonical"] for t in before if t.state == TrialState.RUNNING
                     and t.user_attrs.get("canonical")}
        if in_flight:
            return name, before, in_flight
    raise AssertionError("3 kills, none with a config in flight")


def test_kill_9_mid_study_then_resume_loses_nothing(db_url):
    """A tune killed with a config in flight: the next tune fails the stale trial (heartbeat),
    gives back its claim, measures the config again and finishes the --trials budget; the killed
    run is marked stale."""
    env = _env(TUNER_HEARTBEAT_S="1")  # grace: 6 s
    name, before, in_flight = _kill_one_mid_measurement(db_url, env)
    done_before = _measured(before)
    assert len(done_before) < 5
    time.sleep(7)  # past the grace period
    proc = subprocess.run(_cmd(db_url, *KILL_ARGS), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _studies(db_url)[name]
    _check_study(after, 5)  # the remaining budget finished, nothing twice, nothing left running
    done_after = _measured(after)
    assert set(done_before) <= set(done_after)  # nothing completed was lost
    assert in_flight <= {text for text, _ in done_after}  # the killed trial's config measured on resume
    db = open_database(db_url)
    with db.session() as s:
        runs = {r.status for r in s.query(TuningRun)}
        assert runs == {"stale", "done"}
        assert s.query(Claim).count() == 5
    db.dispose()


def test_a_live_tune_finishes_what_a_killed_one_left_in_flight(db_url):
    """A tune started right after another was killed (its trial's heartbeat not stale yet): it
    claims the rest of the budget, then waits for the dead trial to go stale instead of ending one
    config short, and measures that config itself: the whole budget, nothing twice, nothing left
    RUNNING, without a third run."""
    env = _env(TUNER_HEARTBEAT_S="1")  # grace: 6 s
    name, before, in_flight = _kill_one_mid_measurement(db_url, env)
    proc = subprocess.run(_cmd(db_url, *KILL_ARGS), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _studies(db_url)[name]
    _check_study(after, 5)
    assert in_flight <= {text for text, _ in _measured(after)}
    assert set(_measured(before)) <= set(_measured(after))


def test_workers_report_each_key_as_it_ends(tmp_path):
    """Without --json, each measurement process's line per key reaches the terminal as the key
    ends (the parent reads the children's output while they run), before the results table; the
    lines' measured counts are the workers' shares of the budget."""
    proc = _tune(f"sqlite:///{tmp_path / 't.db'}", "--shape", "16,32,32", "--shape", "16,64,32", "--trials", "4",
                 "--workers", "2", "--seed", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    keyed = [line for line in lines if line.startswith(("worker 0 [", "worker 1 ["))]
    assert sorted(line.split(":")[0] for line in keyed) == [
        "worker 0 [1/2] 16,32,32,1", "worker 0 [2/2] 16,64,32,1", "worker 1 [1/2] 16,32,32,1", "worker 1 [2/2] 16,64,32,1"]
    for key in ("16,32,32,1", "16,64,32,1"):
        shares = [int(line.split(": ")[1].split("/")[0]) for line in keyed if key in line]
        assert sum(shares) == 4, keyed
    first_table = next(i for i, line in enumerate(lines) if line.startswith("tuning results"))
    assert all(lines.index(line) < first_table for line in keyed)


def test_progress_lines_survive_a_read_that_ends_inside_a_character(tmp_path):
    """The parent reads a child's output as it grows: a read that ends between the two bytes of
    "µ" must not turn it into replacement characters, and a line is passed on once, when whole."""
    from tuner.tuning.parallel import Child, _progress

    line = "[1/2] 16,32,32,1: 3/12 measured, search best 9.50 µs, 4 s"
    data = (line + "\n{\"results\": []}\n").encode()
    cut = data.index("µ".encode()) + 1  # inside the two bytes of µ
    seen = []
    with open(tmp_path / "out", "w+b") as out:
        child = Child(index=0, gpu=None, out=out)
        out.write(data[:cut])
        out.flush()
        _progress(child, lambda c, text: seen.append(text))
        assert seen == []  # the line is not whole yet
        out.write(data[cut:])
        out.flush()
        _progress(child, lambda c, text: seen.append(text))
    assert seen == [line]
