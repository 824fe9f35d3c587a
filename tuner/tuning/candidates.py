"""Candidate generation: configs asked from the sampler, canonicalised, with the constraints' verdict."""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import Trial

from kernels.base import Config, Kernel, Key
from tuner.tuning.interrupts import interrupt_held


def canon_text(config: Config) -> str:
    return json.dumps(config, sort_keys=True)


def grid_configs(kernel: Kernel, key: Key, dtype: str, device: str, arch: int = 9) -> list[Config]:
    """Every valid config of the space, canonicalised and without duplicates (enumerated over the
    kernel's grid_spaces: mm's whole product at M=512 is 9.8M combinations, 219 s on one core)."""
    seen: dict[str, Config] = {}
    for space in kernel.grid_spaces(key, dtype, device):
        names = list(space)
        for values in itertools.product(*(space[n] for n in names)):
            cfg = kernel.canonical(key, dict(zip(names, values)))
            text = canon_text(cfg)
            if text in seen or kernel.invalid_reason(key, cfg, dtype, device, arch=arch):
                continue
            seen[text] = cfg
    return list(seen.values())


@dataclass
class Candidate:
    trial: Trial
    config: Config  # canonical
    text: str  # canon_text(config): the key of the study's history
    invalid_reason: str | None  # why the constraints refuse it; None when valid


class Candidates:
    """Asks the study's sampler for the next config. With `grid` (the grid sampler) tuner
    enqueues each config of the list itself and stops when the list is done."""

    def __init__(self, study: optuna.Study, kernel: Kernel, key: Key, dtype: str, device: str, arch: int,
                 grid: list[Config] | None = None):
        self.study, self.kernel, self.key, self.dtype, self.device, self.arch = study, kernel, key, dtype, device, arch
        self.space = kernel.space(key, dtype, device)
        self.dists = {n: CategoricalDistribution(list(c)) for n, c in self.space.items()}
        self.grid = iter(grid) if grid is not None else None
        self._valid: list[Config] | None = None  # the valid space, enumerated when first needed
        self.asked: list[Trial] = []  # every trial this run asked (a Ctrl-C fails those still running)

    def project(self, config: Config) -> Config:
        """A config from elsewhere (the runtime, another key) as this space's canonical config."""
        return self.kernel.canonical(self.key, {n: config.get(n) for n in self.space})

    def invalid_reason(self, config: Config) -> str | None:
        return self.kernel.invalid_reason(self.key, config, self.dtype, self.device, arch=self.arch)

    def enqueue_warm(self, configs: list[Config]) -> None:
        """Have the sampler try these first, those of them that are in the space and valid."""
        for cfg in map(self.project, configs):
            if all(cfg[n] in self.space[n] for n in self.space) and not self.invalid_reason(cfg):
                self.study.enqueue_trial(cfg, skip_if_exists=True)

    def enqueue_unexplored(self, tried: Callable[[str], bool], seed: int) -> bool:
        """Queue one valid config not `tried` yet, picked at random; False when none is left. For
        a sampler that keeps proposing refused or known configs: on small keys (mm 16,32,32: 12
        valid configs of the space) TPE asked 400 refused ones in a row and the search stopped
        with nothing measured."""
        import random

        if self._valid is None:
            self._valid = grid_configs(self.kernel, self.key, self.dtype, self.device, self.arch)
        left = [cfg for cfg in self._valid if not tried(canon_text(cfg))]
        if not left:
            return False
        self.study.enqueue_trial(random.Random(seed).choice(left))
        return True

    def ask(self) -> Candidate | None:
        """The next candidate; None when the grid is done."""
        if self.grid is not None:
            nxt = next(self.grid, None)
            if nxt is None:
                return None
            self.study.enqueue_trial(nxt)
        # a Ctrl-C is held back while the trial is created and recorded as asked: one caught inside
        # study.ask left a trial RUNNING that no process knew as its own
        with interrupt_held(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")  # tuner beats for its own trials
            trial = self.study.ask(self.dists)
            self.asked.append(trial)
        cfg = self.kernel.canonical(self.key, dict(trial.params))
        text = canon_text(cfg)
        trial.set_user_attr("canonical", text)
        return Candidate(trial, cfg, text, self.invalid_reason(cfg))
