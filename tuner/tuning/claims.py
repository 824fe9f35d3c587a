"""A study's claims as the search uses them (db.claims holds the queries), and the clean-up of
what a killed or interrupted process left: stale trials failed, their claims given back, their
configs queued again."""

from __future__ import annotations

import os
import socket
import warnings
from datetime import datetime, timedelta
from typing import Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from db import claims as q
from db.claims import Taken
from tuner.tuning.heartbeat import GRACE_S


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class StudyClaims:
    """The claims of one study, taken by this process."""

    def __init__(self, sessions: Callable[[], Session], study_name: str):
        self.sessions, self.study_name, self.owner = sessions, study_name, owner()

    def take(self, text: str, trial_number: int, limit: int | None) -> Taken:
        return q.claim(self.sessions, study_name=self.study_name, config=text, trial_number=trial_number,
                       owner=self.owner, limit=limit)

    def count(self) -> int:
        return q.count(self.sessions, self.study_name)

    def release(self, trial_numbers: Iterable[int]) -> int:
        return q.release(self.sessions, self.study_name, trial_numbers)

    def sweep(self, study: optuna.Study, measured: dict[str, int]) -> None:
        """At study open: clean up (`clean`), and claim configs measured before claims existed
        (`measured`: canonical text -> trial number)."""
        self.clean(study)
        q.backfill(self.sessions, self.study_name, measured, self.owner)

    def clean(self, study: optuna.Study) -> None:
        """Fail what killed processes left running and give back the claims of trials that ended
        unmeasured (their configs are queued again)."""
        fail_stale(study, self.sessions)
        unmeasured = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if not t.user_attrs.get("status")]
        self.release(unmeasured)

    def held_running(self, study: optuna.Study) -> int:
        """Claimed trials of the study still running: in other processes when this one has none in
        flight (live ones, or killed ones whose heartbeat has not gone stale yet)."""
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        return len(q.claimed(self.sessions, self.study_name, running))


def fail_stale(study: optuna.Study, sessions: Callable[[], Session]) -> None:
    """Optuna's fail_stale_trials (a trial whose heartbeat is older than the grace period; the
    storage's callback, `on_stale`, gives back its claim), and trials left RUNNING without a
    claim for longer than the grace period: asked by a process killed or interrupted before it
    claimed the config (a live process claims or answers within milliseconds of asking, and its
    heartbeat starts before the claim)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    cutoff = datetime.now() - timedelta(seconds=GRACE_S)
    old = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and t.datetime_start < cutoff]
    for number in set(old) - q.claimed(sessions, study.study_name, old):
        try:
            study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # told meanwhile by another process
            pass


def on_stale(sessions: Callable[[], Session]) -> Callable[[optuna.Study, FrozenTrial], None]:
    """The storage's callback for a trial failed as stale: its claim is given back and its config
    queued again, so the study measures it later (as a Ctrl-C does for configs in flight); not
    when the trial's outcome was written (History.tell_result: status last) before the kill."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get("status"):
            return  # measured to the end, killed before the tell: its outcome is in its attributes
        q.release(sessions, study.study_name, [trial.number])
        if trial.params:
            study.enqueue_trial(dict(trial.params))

    return callback
