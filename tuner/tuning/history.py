"""The study's record: the outcome of every config tried, and what the sampler is told.

Every tell to the Optuna study goes through here, with the user attrs it stores (status,
reason, duplicate, errors); only "canonical" is set earlier, when the candidate is asked.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, NamedTuple

import optuna
from optuna.trial import Trial, TrialState

from kernels.base import Config
from tuner.tuning.measurer import Result, Status


class Known(NamedTuple):
    """How one canonical config ended: its trial state, µs when measured, its user attrs, the
    number of the trial that measured it."""

    state: TrialState
    value: float | None
    attrs: dict
    number: int | None = None


class Best(NamedTuple):
    us: float
    config: Config
    rel_error: float | None
    max_abs_error: float | None


_NOT_MEASURED = (Status.INVALID, Status.INTERRUPTED, Status.UNUSED)
# the GPU this worker measures on when `tune --gpus` started it (tuner.tuning.parallel): kept per
# trial so a study worked by several GPUs says which timed what
MEASURING_GPUS = os.environ.get("TUNER_WORKER_GPU", "")


def _is_record(t: optuna.trial.FrozenTrial) -> bool:
    """A finished trial that measured (or failed to measure) its config. A failed trial without a
    status was failed as stale (its process was killed mid-measurement): not a record."""
    attrs = t.user_attrs
    if attrs.get("canonical") is None or t.state in (TrialState.RUNNING, TrialState.WAITING):
        return False
    if attrs.get("duplicate") or attrs.get("status") in _NOT_MEASURED:
        return False
    return t.state != TrialState.FAIL or attrs.get("status") is not None


def _load(study: optuna.Study) -> dict[str, Known]:
    """Canonical config -> outcome of every finished trial of the study."""
    out: dict[str, Known] = {}
    for t in filter(_is_record, study.get_trials(deepcopy=False)):
        text, status = t.user_attrs["canonical"], t.user_attrs.get("status")
        if t.state == TrialState.FAIL and status == Status.OK and t.user_attrs.get("time_us") is not None:
            # measured, then its process was killed before the tell (the trial failed as stale)
            out[text] = Known(TrialState.COMPLETE, t.user_attrs["time_us"], dict(t.user_attrs), t.number)
        elif t.state == TrialState.COMPLETE and status not in (None, Status.OK):  # a penalised failure (GP)
            out.setdefault(text, Known(TrialState.FAIL, None, dict(t.user_attrs), t.number))
        elif t.state == TrialState.COMPLETE or text not in out:
            out[text] = Known(t.state, t.value, dict(t.user_attrs), t.number)
    return out


class History:
    def __init__(self, study: optuna.Study, penalise: bool):
        self.study = study
        # GPSampler models completed trials only: a config it never sees fail it proposes again
        # and again (seen on the H100 grid replay: 524 invalid asks for 14 measured). For GP,
        # invalid and failed configs are told as completed with a penalty worse than anything measured.
        self.penalise = penalise
        self.known = _load(study)

    def refresh(self) -> None:
        """Reload from the study: what other processes measured meanwhile becomes known."""
        self.known = _load(self.study)

    def numbers(self) -> dict[str, int]:
        """Canonical config -> the number of the trial that measured it."""
        return {text: k.number for text, k in self.known.items() if k.number is not None}

    def __contains__(self, text: str) -> bool:
        return text in self.known

    def get(self, text: str) -> Known | None:
        return self.known.get(text)

    def measured(self) -> list[tuple[float, str]]:
        """(µs, canonical config) of every measured config, in the order they were recorded."""
        return [(k.value, text) for text, k in self.known.items()
                if k.state == TrialState.COMPLETE and k.value is not None]

    def best(self) -> Best | None:
        done = [Best(us, json.loads(text), self.known[text].attrs.get("rel_error"),
                     self.known[text].attrs.get("max_abs_error")) for us, text in self.measured()]
        return min(done, key=lambda b: b.us) if done else None

    def trials_total(self) -> int:
        """Configs measured over the whole study (failures count, repeats and invalid do not)."""
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.FAIL) and _is_record(t))

    # -- telling the study

    def tell_bad(self, trial: Trial, state: TrialState) -> None:
        if not self.penalise:
            self.study.tell(trial, state=state)
            return
        values = [us for us, _ in self.measured()]
        self.study.tell(trial, 4.0 * max(values) if values else 1e9)

    def tell_invalid(self, trial: Trial, reason: str) -> None:
        trial.set_user_attr("status", Status.INVALID.value)
        trial.set_user_attr("reason", reason)
        self.tell_bad(trial, TrialState.PRUNED)

    def tell_repeat(self, trial: Trial, text: str) -> float | None:
        """A config asked again (or claimed by another process) is not measured; its µs when it
        was measured.

        It is told PRUNED, marked duplicate (with the known µs as `duplicate_of_us`), not
        COMPLETE with the old value: optuna-dashboard then counts only real measurements as
        complete (it showed 608 "Complete" for 50 measured). TPE treats a pruned trial without
        intermediate values as one of the worst, so a config it repeats weighs against asking it
        a third time: mm 16,64,64 on CPU (tpe, 50 trials, seed 0) stored 543 trials (162 COMPLETE)
        before, 387 (50 COMPLETE) after; replayed on 3 keys x 12 seeds (30 trials), 176 -> 124
        stored, and the best found ranked 28 -> 32 on average of 72 to 3809 valid configs (the
        seeds alone spread it from 0 to 448). GP models completed trials only and would ask a
        pruned repeat again and again: for GP (penalise) a repeat is told the known value, as
        before, and a repeat of a failure the penalty."""
        trial.set_user_attr("duplicate", True)
        prev = self.known.get(text)
        if prev and prev.attrs.get("reason"):
            trial.set_user_attr("reason", f"duplicate of a failed config: {prev.attrs['reason']}")
        if prev and prev.state == TrialState.COMPLETE:
            trial.set_user_attr("duplicate_of_us", prev.value)
            if self.penalise:
                self.study.tell(trial, prev.value)
                return prev.value
        self.tell_bad(trial, TrialState.PRUNED)
        return prev.value if prev else None

    def tell_unused(self, trial: Trial) -> None:
        """Asked after the study's budget was claimed to the last config by other processes."""
        trial.set_user_attr("status", Status.UNUSED.value)
        self.study.tell(trial, state=TrialState.PRUNED)

    def tell_result(self, trial: Trial, text: str, res: Result) -> None:
        """The outcome goes into the trial's attributes, `status` last, then the state is told: a
        process killed between the two leaves a trial whose outcome is whole in its attributes
        (time_us included), which the next process keeps (`_load`, claims.on_stale) instead of
        measuring the config again (CI saw that window: one config measured twice after a kill)."""
        for name in ("rel_error", "max_abs_error"):
            if getattr(res, name) is not None:
                trial.set_user_attr(name, getattr(res, name))
        if MEASURING_GPUS:  # which GPU timed it, when `--gpus` split the study over several
            trial.set_user_attr("gpu", MEASURING_GPUS)
        if res.ok:
            trial.set_user_attr("time_us", res.time_us)
        else:
            trial.set_user_attr("reason", res.reason or "")
        trial.set_user_attr("status", res.status.value)
        if res.ok:
            self.study.tell(trial, res.time_us)
            self.known[text] = Known(TrialState.COMPLETE, res.time_us,
                                     {"rel_error": res.rel_error, "max_abs_error": res.max_abs_error})
            return
        self.tell_bad(trial, TrialState.FAIL)
        self.known[text] = Known(TrialState.FAIL, None, {"reason": res.reason})

    def abandon(self, trials: Iterable[Trial]) -> None:
        """Trials asked but never measured (the user interrupted) end as failed, not running, marked
        interrupted (neither measured nor known), and their configs are queued again: the next run
        of the same study measures them first."""
        for trial in trials:
            trial.set_user_attr("status", Status.INTERRUPTED.value)
            params = dict(trial.params)
            self.study.tell(trial, state=TrialState.FAIL)
            if params:
                self.study.enqueue_trial(params)  # not skip_if_exists: the failed trial has these params
