"""The study's record survives a reload: what a resumed search knows is what the last one told."""

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from tuner.tuning.candidates import canon_text
from tuner.tuning.finalists import finalists
from tuner.tuning.history import History
from tuner.tuning.measurer import Result, Status

DISTS = {"x": CategoricalDistribution([1, 2, 3, 4, 5, 6])}


def _ask(study, x):
    study.enqueue_trial({"x": x})
    trial = study.ask(DISTS)
    trial.set_user_attr("canonical", canon_text({"x": x}))
    return trial


def _tell_one_of_each(penalise):
    study = optuna.create_study(direction="minimize")
    h = History(study, penalise=penalise)
    h.tell_result(_ask(study, 1), canon_text({"x": 1}), Result(ok=True, time_us=5.0, rel_error=0.01))
    h.tell_result(_ask(study, 2), canon_text({"x": 2}), Result(ok=False, status=Status.WRONG, reason="rel 9"))
    h.tell_result(_ask(study, 3), canon_text({"x": 3}), Result(ok=True, time_us=3.0))
    h.tell_invalid(_ask(study, 4), "too big")
    assert h.tell_repeat(_ask(study, 1), canon_text({"x": 1})) == 5.0
    assert h.tell_repeat(_ask(study, 2), canon_text({"x": 2})) is None
    _ask(study, 6)  # still running: not part of the record
    return study, h


def test_a_reload_knows_what_was_told():
    for penalise in (False, True):
        study, told = _tell_one_of_each(penalise)
        again = History(study, penalise=penalise)
        assert set(again.known) == {canon_text({"x": x}) for x in (1, 2, 3)}
        # a GP-penalised failure is stored as a completed trial; it is reloaded as a failure
        assert again.get(canon_text({"x": 2})).state == TrialState.FAIL
        assert again.measured() == told.measured() == [(5.0, canon_text({"x": 1})), (3.0, canon_text({"x": 3}))]
        assert again.best().us == 3.0 and again.best().config == {"x": 3}
        assert again.trials_total() == 3  # repeats and invalid configs are not trials


def test_penalised_failures_are_worse_than_anything_measured():
    study, _ = _tell_one_of_each(penalise=True)
    by_x = {t.params["x"]: t for t in study.get_trials() if not t.user_attrs.get("duplicate")}
    assert by_x[2].state == TrialState.COMPLETE and by_x[2].value == 4.0 * 5.0  # the slowest measured, x4
    assert by_x[4].user_attrs["status"] == "invalid" and by_x[4].value == 4.0 * 5.0
    repeat_of_failure = [t for t in study.get_trials() if t.user_attrs.get("duplicate") and t.params["x"] == 2]
    assert repeat_of_failure[0].user_attrs["reason"] == "duplicate of a failed config: rel 9"


def test_finalists_are_the_fastest_then_the_runtimes_measured_picks():
    study = optuna.create_study(direction="minimize")
    h = History(study, penalise=False)
    for x, us in [(1, 9.0), (2, 1.0), (3, 2.0), (4, 3.0), (5, 4.0)]:
        h.tell_result(_ask(study, x), canon_text({"x": x}), Result(ok=True, time_us=us))
    top3 = [canon_text({"x": x}) for x in (2, 3, 4)]
    untuned = [canon_text({"x": x}) for x in (1, 2, 1, 6)]  # 2 is already in, 6 was never measured
    assert finalists(h, untuned) == top3 + [canon_text({"x": 1})]


def test_an_interrupted_config_is_queued_again_not_known_as_failed():
    """Ctrl-C with configs asked but not measured: they end FAIL (nothing stays RUNNING), count as
    neither measured nor known, and the next run of the study asks them first."""
    study = optuna.create_study(direction="minimize")
    h = History(study, penalise=False)
    h.tell_result(_ask(study, 1), canon_text({"x": 1}), Result(ok=True, time_us=5.0))
    h.abandon([_ask(study, 2), _ask(study, 3)])
    assert not [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    again = History(study, penalise=False)
    assert set(again.known) == {canon_text({"x": 1})} and again.trials_total() == 1
    waiting = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False)
               if t.state == TrialState.WAITING]
    assert waiting == [{"x": 2}, {"x": 3}]
    assert study.ask(DISTS).params == {"x": 2}  # the resumed search measures them first


def test_a_repeat_is_not_a_completed_trial():
    """optuna-dashboard counts COMPLETE trials: a repeat is PRUNED and marked (issue 14: 608
    "Complete" for 50 measured); GP, which models completed trials only, still gets the value."""
    study, _ = _tell_one_of_each(penalise=False)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in complete) == [1, 3]  # the two measured configs, once each
    (repeat,) = [t for t in study.get_trials() if t.user_attrs.get("duplicate") and t.params["x"] == 1]
    assert repeat.state == TrialState.PRUNED and repeat.user_attrs["duplicate_of_us"] == 5.0
    study, _ = _tell_one_of_each(penalise=True)
    (repeat,) = [t for t in study.get_trials() if t.user_attrs.get("duplicate") and t.params["x"] == 1]
    assert repeat.state == TrialState.COMPLETE and repeat.value == 5.0


def test_a_worker_started_for_one_gpu_records_it_on_every_measured_trial(monkeypatch):
    import tuner.tuning.history as history

    study = optuna.create_study(direction="minimize")
    h = History(study, penalise=False)
    h.tell_result(_ask(study, 1), canon_text({"x": 1}), Result(ok=True, time_us=5.0))
    monkeypatch.setattr(history, "MEASURING_GPUS", "1")  # as `tune --gpus 0,1` starts its second worker
    h.tell_result(_ask(study, 2), canon_text({"x": 2}), Result(ok=True, time_us=4.0))
    h.tell_result(_ask(study, 3), canon_text({"x": 3}), Result(ok=False, status=Status.WRONG, reason="rel 9"))
    assert [t.user_attrs.get("gpu") for t in study.get_trials()] == [None, "1", "1"]


class _Killed(BaseException):
    """The process dying between the outcome's attributes and the tell."""


def _killed_before_the_tell(study, h, x, res):
    trial = _ask(study, x)
    tell = study.tell

    def die(*a, **k):
        raise _Killed

    study.tell = die
    try:
        h.tell_result(trial, canon_text({"x": x}), res)
    except _Killed:
        pass
    finally:
        study.tell = tell
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)  # as fail_stale_trials does
    return trial


def test_a_kill_between_the_outcome_and_the_tell_keeps_the_measurement():
    """The trial's outcome is whole in its attributes before the tell (status written last): a
    process killed in between leaves a failed trial that the next process knows as measured, with
    its time, so the config is not measured again (CI: one config measured twice after a kill)."""
    study = optuna.create_study(direction="minimize")
    h = History(study, penalise=False)
    h.tell_result(_ask(study, 1), canon_text({"x": 1}), Result(ok=True, time_us=5.0))
    _killed_before_the_tell(study, h, 2, Result(ok=True, time_us=3.0, rel_error=0.01))
    _killed_before_the_tell(study, h, 3, Result(ok=False, status=Status.WRONG, reason="rel 9"))
    again = History(study, penalise=False)
    assert again.measured() == [(5.0, canon_text({"x": 1})), (3.0, canon_text({"x": 2}))]
    assert again.best().us == 3.0 and again.best().rel_error == 0.01
    assert again.get(canon_text({"x": 3})).state == TrialState.FAIL and again.trials_total() == 3


def test_a_stale_trial_is_measured_again_only_when_its_outcome_was_not_written(tmp_path):
    """claims.on_stale, on a real tuner database: a trial killed mid-measurement (no status) gives
    back its claim and its config is queued again; one killed after writing its outcome keeps both."""
    from db import claims as q
    from db import open_database
    from tuner.tuning.claims import on_stale

    db = open_database(f"sqlite:///{tmp_path / 't.db'}")
    try:
        study = optuna.create_study(direction="minimize", study_name="s")
        h = History(study, penalise=False)
        mid = _ask(study, 1)
        done = _killed_before_the_tell(study, h, 2, Result(ok=True, time_us=3.0))
        for t in (mid, done):
            q.claim(db.sessions, study_name="s", config=t.user_attrs["canonical"], trial_number=t.number, owner="me")
        study._storage.set_trial_state_values(mid._trial_id, state=TrialState.FAIL)
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
        for t in (mid, done):
            on_stale(db.sessions)(study, frozen[t.number])
        assert q.claimed(db.sessions, "s", [mid.number, done.number]) == {done.number}
        waiting = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False)
                   if t.state == TrialState.WAITING]
        assert waiting == [{"x": 1}]
    finally:
        db.dispose()
