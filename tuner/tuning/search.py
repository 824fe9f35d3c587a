"""The search over one (kernel, key, dtype): an Optuna study stored in tuner's database.

Candidates flow through a short pipeline: asked from the sampler, canonicalised, checked
against the constraints (invalid ones are told PRUNED without compiling), deduplicated against
every earlier trial of the study, claimed in the database (with several processes on one study,
only the one whose claim is inserted measures it: a config is never measured twice), compiled
ahead in the compile pool, then timed and checked in the worker. As in Optuna's study/_optimize.py, the loop
is split into small steps: fill the pipeline, measure the oldest candidate, record it.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import optuna
from optuna.trial import Trial, TrialState

from kernels.base import Config, Kernel, Key
from tuner.tuning.budget import Budget
from tuner.tuning.candidates import Candidate, Candidates, canon_text, grid_configs
from tuner.tuning.compile_pool import CompilePool
from tuner.tuning.claims import StudyClaims, Taken
from tuner.tuning.finalists import side_by_side
from tuner.tuning.heartbeat import GRACE_S, HEARTBEAT_S, Heartbeat
from tuner.tuning.history import Best, History
from tuner.tuning.interrupts import interrupts_checked, raise_if_pending
from tuner.tuning.measurer import Measurer, Result, Setup, Status

SAMPLERS = ("tpe", "gp", "random", "grid")
# asks in a row that produced nothing new before tuner picks an untried valid config itself (the
# search ends "space exhausted" only when none is left); once the sampler was found stuck, sooner
MAX_IDLE_ASKS = 100
STUCK_IDLE_ASKS = 10


class EventKind(str, Enum):
    MEASURED = "measured"
    FAILED = "failed"
    INVALID = "invalid"  # refused by the constraints, not compiled
    DUPLICATE = "duplicate"  # asked again, answered from the history


@dataclass
class Event:
    """One step of the search, for progress display."""

    kind: EventKind
    config: Config
    time_us: float | None
    best_us: float | None
    measured: int  # the study's: measured before this run plus by it
    reason: str | None = None
    own: int = 0  # by this process (a worker's share of a study several processes tune)


@dataclass
class Outcome:
    study_name: str
    setup: Setup
    best_config: Config | None
    best_us: float | None
    best_rel_error: float | None
    best_max_abs_error: float | None
    measured: int  # in this call
    trials_total: int  # measured over the whole study
    stop_reason: str
    counts: dict[str, int] = field(default_factory=dict)
    timing: str = ""
    wall_s: float = 0.0  # the search, after the baselines
    setup_s: float = 0.0  # inputs and baselines (includes FlagGems' first-call autotune)
    # best_us and setup.baselines_us come from the side-by-side pass; the search's own timing
    # of the winner and the setup's baseline timings are kept here
    confirmed: bool = False
    search_best_us: float | None = None
    setup_baselines_us: dict[str, float] = field(default_factory=dict)


@dataclass
class InFlight:
    """A candidate in the pipeline: asked, compiling ahead, not measured yet."""

    trial: Trial
    config: Config
    text: str
    future: Future | None


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar: several trials are in flight (compile-ahead), keep them apart
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=10,
                                              multivariate=True, group=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)
    if name in ("random", "grid"):
        # grid: tuner enqueues every valid canonical config itself (see grid_configs); the
        # random sampler then only fills params an enqueued trial lacks (none)
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")


def study_name_for(kernel: Kernel, key: Key, dtype: str, fingerprint: str) -> str:
    """One study per (op, key, dtype, environment, kernel source): after an edit of the kernel's
    source a search starts afresh instead of resuming next to timings and errors of the old code."""
    key_text = ",".join(f"{n}={v}" for n, v in zip(kernel.key_names, key))
    return f"{kernel.name}|{key_text}|{dtype}|{fingerprint[:12]}|src={kernel.source_hash()[:8]}"


class Search:
    """One search: set up, ask/measure/record until the budget or the space ends, confirm."""

    def __init__(self, *, kernel: Kernel, key: Key, dtype: str, device: str,
                 storage: optuna.storages.BaseStorage | str, study_name: str, measurer: Measurer,
                 sampler: str = "tpe", budget: Budget | None = None, compile_pool: CompilePool | None = None,
                 warm_start: list[Config] | None = None, seed: int | None = None, arch: int = 9,
                 on_event: Callable[[Event], None] | None = None, claims: StudyClaims | None = None,
                 heartbeat: Heartbeat | None = None, on_best: Callable[[Best, Setup, int], None] | None = None):
        """claims: the study's claims in tuner's database, for several processes on one study
        (None: this process alone). heartbeat: beats for the trials in flight. on_best: called
        with each new best (search timing), the setup and the study's measured count."""
        self.kernel, self.key, self.dtype, self.device, self.arch = kernel, key, dtype, device, arch
        self.storage, self.study_name, self.sampler, self.seed = storage, study_name, sampler, seed
        self.measurer, self.compile_pool, self.on_event = measurer, compile_pool, on_event
        self.claims, self.heartbeat, self.on_best = claims, heartbeat or Heartbeat(None), on_best
        self.setup: Setup | None = None
        self.budget = budget or Budget()
        self.warm_start = warm_start or []
        self.counts = {kind.value: 0 for kind in EventKind}
        self.pending: deque[InFlight] = deque()
        # ask ahead one candidate per compile process, so compiling overlaps timing
        self.lookahead = max(1, compile_pool.workers if compile_pool else 1)
        self.best: Best | None = None
        self.last_gain_at = 0  # measured count at the last gain of 0.5% or more
        self.stop_reason = "budget"
        self.exhausted = False  # nothing more to ask: grid done, space exhausted, or timed out
        self.stuck = False  # the sampler proposed nothing new MAX_IDLE_ASKS times in a row
        self.prior = 0  # trials the study had measured before this run
        self.first_number = 0
        self.timing = ""
        self.t_start = 0.0
        self.waiting_since = 0.0  # when this process began waiting for others' claimed trials (0: not)

    def run(self) -> Outcome:
        t_setup = time.monotonic()
        setup = self.measurer.setup(self.key, self.dtype, seed=self.seed or 0)
        # the budget is for searching: the baselines (FlagGems' own first-call autotune) come before
        self.t_start = time.monotonic()
        self.setup = setup
        self._open_study(setup)
        self.timing = setup.timing
        self._optimize()
        search_best_us = self.best.us if self.best else None
        setup_baselines = dict(setup.baselines_us)
        confirmed = self._confirm(setup)
        best = self.best
        return Outcome(
            study_name=self.study_name, setup=setup,
            best_config=best.config if best else None, best_us=best.us if best else None,
            best_rel_error=best.rel_error if best else None, best_max_abs_error=best.max_abs_error if best else None,
            measured=self._done(), trials_total=self.history.trials_total(), stop_reason=self.stop_reason,
            counts=self.counts, timing=self.timing, wall_s=time.monotonic() - self.t_start,
            setup_s=self.t_start - t_setup, confirmed=confirmed, search_best_us=search_best_us,
            setup_baselines_us=setup_baselines,
        )

    def _open_study(self, setup: Setup) -> None:
        """Create or resume the study, load its history, queue the configs to try first."""
        study = optuna.create_study(study_name=self.study_name, storage=self.storage,
                                    sampler=make_sampler(self.sampler, self.seed),
                                    direction="minimize", load_if_exists=True)
        self.first_number = len(study.get_trials(deepcopy=False))  # trials numbered from here are this run's
        fresh_study = self.first_number == 0
        self.history = History(study, penalise=self.sampler == "gp")
        if self.claims:
            self.claims.sweep(study, self.history.numbers())
            self.history.refresh()
        self.prior = self.history.trials_total()  # --trials is the study's total: a rerun does what is left
        grid = None
        if self.sampler == "grid":
            grid = [c for c in grid_configs(self.kernel, self.key, self.dtype, self.device, self.arch)
                    if canon_text(c) not in self.history]
        self.candidates = Candidates(study, self.kernel, self.key, self.dtype, self.device, self.arch, grid)
        if grid is None and fresh_study:
            # warm start: what the runtime picks untuned, then winners of neighbouring keys
            self.candidates.enqueue_warm([*setup.untuned_configs, *self.warm_start])
        self.best = self.history.best()  # a resumed study starts from its best so far

    def _optimize(self) -> None:
        with interrupts_checked():
            self._optimize_loop()

    def _optimize_loop(self) -> None:
        try:
            while self._fill_pipeline():
                raise_if_pending()  # a Ctrl-C that a finalizer swallowed still stops the search
                self._measure_next()
        except KeyboardInterrupt:
            # the pipeline's trials and one asked but not yet admitted: every trial this run asked
            # that is still running. One the interrupt caught inside study.ask (created, never
            # returned) has no config yet; the next process to open the study fails it (claims.fail_stale).
            study = self.history.study
            running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            asked = [t for t in self.candidates.asked if t.number in running]
            self.history.abandon(asked)
            if self.claims:
                self.claims.release(t.number for t in asked)
            if not self.claims:  # alone on the study: every other running trial of this run is that one
                for number in running - {t.number for t in asked}:
                    if number >= self.first_number:
                        study.tell(number, state=TrialState.FAIL)
            raise

    def _fill_pipeline(self) -> bool:
        """Ask ahead while budget is left; False when nothing is left to measure."""
        while True:
            while not self.exhausted and len(self.pending) < self.lookahead and self._budget_left():
                self.exhausted = not self._ask_next()
            if self.pending:
                self.waiting_since = 0.0
                return True
            if not self._wait_for_others():
                return False

    def _wait_for_others(self) -> bool:
        """With claims: the study's budget is claimed to the last config and this process has
        nothing in flight, but other processes' claimed trials still run. Wait a heartbeat and
        clean up: a killed process's trial goes stale, its claim comes back and its config is
        queued again, and this process measures it (before, the study ended one config short and
        the trial stayed RUNNING until the next tune opened the study). True: ask again.

        Bounded: a dead trial goes stale GRACE_S after its last beat, so after GRACE_S plus a beat
        of waiting what still runs is alive and finishes the budget itself; without heartbeats
        nothing can go stale and nothing is waited for."""
        if not self.claims or self.stop_reason != "trials" or self.budget.timed_out(self._elapsed()):
            return False
        if self.heartbeat.storage is None:
            return False
        now = time.monotonic()
        self.waiting_since = self.waiting_since or now
        if now - self.waiting_since > GRACE_S + HEARTBEAT_S:
            return False
        study = self.history.study
        if not self.claims.held_running(study):
            return False
        time.sleep(HEARTBEAT_S)
        raise_if_pending()
        self.claims.clean(study)
        self.exhausted = False
        return True

    def _budget_left(self) -> bool:
        done = self._done()
        # with claims, the study's claims are its budget: measured plus in flight, every process
        used, in_flight = (self.claims.count(), 0) if self.claims else (self.prior + done, len(self.pending))
        reason = self.budget.stop_reason(done=used, in_flight=in_flight,
                                         elapsed_s=self._elapsed(),
                                         since_gain=done - self.last_gain_at if self.best is not None else None)
        # asked again after each measurement: the latest reason is the one reported
        if reason:
            self.stop_reason = reason
        return reason is None

    def _ask_next(self) -> bool:
        """Ask candidates until one goes into the pipeline; False when nothing is left."""
        idle, limit = 0, STUCK_IDLE_ASKS if self.stuck else MAX_IDLE_ASKS
        while True:
            cand = self.candidates.ask()
            if cand is None:
                return self._stop("grid exhausted")
            admitted = self._admit(cand)
            if admitted is None:
                return self._stop("trials")  # other processes claimed the rest of the budget
            if admitted:
                return True
            idle += 1
            if idle >= limit:
                pending = {job.text for job in self.pending}
                if not self.candidates.enqueue_unexplored(lambda t: t in self.history or t in pending,
                                                          seed=len(self.history.known)):
                    return self._stop("space exhausted")  # every valid config has been tried
                idle, limit, self.stuck = 0, STUCK_IDLE_ASKS, True
            if self.budget.timed_out(self._elapsed()):
                return self._stop("timeout")

    def _admit(self, cand: Candidate) -> bool | None:
        """Into the pipeline when valid, new and claimed; an invalid or known config is answered at
        once. None when the study's budget is claimed to the last config."""
        if cand.invalid_reason:
            self.history.tell_invalid(cand.trial, cand.invalid_reason)
            self._note(EventKind.INVALID, cand.config, None, cand.invalid_reason)
            return False
        if cand.text not in self.history and not any(job.text == cand.text for job in self.pending):
            self.heartbeat.watch(cand.trial)  # before the claim: a claimed trial always has a heartbeat
            taken = self.claims.take(cand.text, cand.trial.number, self.budget.trials) if self.claims else Taken.CLAIMED
            if taken != Taken.CLAIMED:
                self.heartbeat.unwatch(cand.trial)
            if taken == Taken.FULL:
                self.history.tell_unused(cand.trial)
                return None
            if taken == Taken.CLAIMED:
                future = self.compile_pool.submit(self.key, self.dtype, cand.config) if self.compile_pool else None
                self.pending.append(InFlight(cand.trial, cand.config, cand.text, future))
                return True
            self.history.refresh()  # another process has it: learn what the others measured
        # never measure twice: repeat the known outcome to the sampler
        known_us = self.history.tell_repeat(cand.trial, cand.text)
        self._note(EventKind.DUPLICATE, cand.config, known_us)
        return False

    def _measure_next(self) -> None:
        job = self.pending[0]  # stays pending while measured: a Ctrl-C then queues it again
        compile_error = self.compile_pool.result(job.future) if self.compile_pool else None
        if compile_error:
            res = Result(ok=False, status=Status.FAILED, reason=compile_error)
        else:
            res = self.measurer.measure(job.config)
        self.pending.popleft()
        self.history.tell_result(job.trial, job.text, res)
        self.heartbeat.unwatch(job.trial)
        if not res.ok:
            self._note(EventKind.FAILED, job.config, None, res.reason)
            return
        self.timing = res.timing or self.timing
        gained = self.best is None or res.time_us < self.best.us * 0.995  # under 0.5% is noise
        if self.best is None or res.time_us < self.best.us:
            self.best = Best(res.time_us, job.config, res.rel_error, res.max_abs_error)
            if self.on_best:  # stored now: a run killed later keeps it (only a faster one replaces it)
                self.on_best(self.best, self.setup, self.history.trials_total())
        self._note(EventKind.MEASURED, job.config, res.time_us)
        if gained:
            self.last_gain_at = self._done()

    def _confirm(self, setup: Setup) -> bool:
        """Re-time the finalists beside the baselines and keep the fastest (a resumed study's
        best comes from history and is confirmed too)."""
        if self.claims:
            self.history.refresh()  # the finalists are the study's best, whoever measured them
            study_best = self.history.best()
            if study_best and (self.best is None or study_best.us < self.best.us):
                self.best = study_best
        if self.best is None:
            return False
        untuned = [canon_text(self.candidates.project(c)) for c in setup.untuned_configs]
        side = side_by_side(self.measurer, self.history, untuned, skip=list(setup.baseline_errors))
        if side is None:
            return False
        self.best = side.best
        setup.baselines_us.update(side.baselines_us)
        return True

    def _note(self, kind: EventKind, config: Config, time_us: float | None, reason: str | None = None) -> None:
        self.counts[kind] += 1
        if self.on_event:
            best = self.best.us if self.best else None
            self.on_event(Event(kind, config, time_us, best, self.prior + self._done(), reason, own=self._done()))

    def _stop(self, reason: str) -> bool:
        self.stop_reason = reason
        return False

    def _done(self) -> int:
        return self.counts[EventKind.MEASURED] + self.counts[EventKind.FAILED]

    def _elapsed(self) -> float:
        return time.monotonic() - self.t_start


def run_search(**kwargs) -> Outcome:
    """One search; the keyword arguments are Search's."""
    return Search(**kwargs).run()
