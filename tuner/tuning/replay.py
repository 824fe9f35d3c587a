"""Replaying recorded timings: a measurer that answers from a finished study instead of a GPU.

With an exhaustive grid recorded once on the H100, any sampler can be run against it many
times on a CPU (Kernel Tuner's simulation runner): the search code is the real one, only the
measurement is looked up. Configs missing from the recording are reported as failed.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from kernels.base import Config, Key
from tuner.tuning.candidates import canon_text
from tuner.tuning.measurer import Measurer, Result, Setup, Status


def recorded_times(storage: str, study_name: str) -> dict[str, float]:
    """Canonical config -> measured µs of every completed, non-duplicate trial."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    return {t.user_attrs["canonical"]: t.value for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and not t.user_attrs.get("duplicate")}


class ReplayMeasurer(Measurer):
    """The measurer on a recording: each config's recorded time, no device."""

    def __init__(self, times: dict[str, float]):
        self.times = times
        self.calls = 0

    def setup(self, key: Key, dtype: str, seed: int = 0) -> Setup:
        return Setup(timing="replay")

    def measure(self, config: Config) -> Result:
        self.calls += 1
        t = self.times.get(canon_text(config))
        if t is None:
            return Result(ok=False, status=Status.FAILED, reason="not in the recording")
        return Result(ok=True, time_us=t, rel_error=0.0, max_abs_error=0.0, timing="replay")

    def confirm(self, configs: list[Config], rounds: int, skip: list[str] = ()) -> None:
        """A recording has one time per config and no baselines to re-time beside them."""
        return None
