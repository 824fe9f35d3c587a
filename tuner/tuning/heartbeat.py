"""Heartbeats: how a process killed mid-study (kill -9, a lost host) is told from a slow one.

A thread of the tune process beats every HEARTBEAT_S for the trials it has in flight (Optuna's
trial heartbeat, `RDBStorage(heartbeat_interval=...)`) and for its `tuner_tuning_runs` row. A
trial whose heartbeat is older than GRACE_S is failed by the next process that opens the study
(`fail_stale_trials`), its claim released and its config queued again (tuner.tuning.stale); a run
row without a heartbeat for GRACE_S is marked 'stale'. The grace is 6 beats, so a beat delayed
by a busy database (SQLite makes writers wait) does not fail a live process's trial.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Callable

from optuna.trial import Trial

# $TUNER_HEARTBEAT_S: seconds between beats (tests use 1 to see a killed process go stale quickly)
HEARTBEAT_S = max(1, int(os.environ.get("TUNER_HEARTBEAT_S", "10")))
GRACE_S = 6 * HEARTBEAT_S


def heartbeat_enabled(storage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


class Heartbeat:
    """Beats for the trials `watch`ed until `unwatch`ed, and calls `beat_run` on each beat."""

    def __init__(self, storage, beat_run: Callable[[], None] | None = None, interval_s: float = HEARTBEAT_S):
        self.storage = storage if heartbeat_enabled(storage) else None
        self.beat_run, self.interval_s = beat_run, interval_s
        self._trials: dict[int, int] = {}  # trial number -> trial id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Heartbeat":
        self._thread = threading.Thread(target=self._run, name="tuner-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def watch(self, trial: Trial) -> None:
        """From now on the trial is beaten for; the first beat at once (a trial without any
        heartbeat is never found stale)."""
        if self.storage is None:
            return
        with self._lock:
            self._trials[trial.number] = trial._trial_id
        self._record(trial._trial_id)

    def unwatch(self, trial: Trial) -> None:
        with self._lock:
            self._trials.pop(trial.number, None)

    def _record(self, trial_id: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.storage.record_heartbeat(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                ids = list(self._trials.values())
            try:
                for trial_id in ids:
                    self._record(trial_id)
                if self.beat_run:
                    self.beat_run()
            except Exception:  # a busy database: the next beat tries again (the grace is 6 beats)
                pass
