"""What the search asks of a measurer, and what it gets back.

A measurer times and checks the configs of one key (Kernel Tuner's runners): the worker client
runs them on the device, the replay measurer looks them up in a recording.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum

from kernels.base import Config, Key


class Status(str, Enum):
    """How a trial ended. A str: Optuna's user attrs and the database keep the plain value."""

    OK = "ok"
    FAILED = "failed"  # raised, or did not compile
    WRONG = "wrong"  # ran, but the result is outside the kernel's tolerance
    CRASHED = "crashed"  # took the worker process or its CUDA context down
    HANG = "hang"  # no answer within the measure timeout
    INVALID = "invalid"  # refused by the kernel's constraints, never compiled
    INTERRUPTED = "interrupted"  # asked, then the user stopped the run: queued again for the next one
    UNUSED = "unused"  # asked when other processes had already claimed the study's whole budget


@dataclass
class Setup:
    baselines_us: dict[str, float] = field(default_factory=dict)
    baseline_errors: dict[str, str] = field(default_factory=dict)
    first_call_s: dict[str, float] = field(default_factory=dict)
    untuned_configs: list[Config] = field(default_factory=list)
    timing: str = ""
    n_sets: int = 1


@dataclass
class Result:
    ok: bool
    time_us: float | None = None
    rel_error: float | None = None
    max_abs_error: float | None = None
    reason: str | None = None
    status: Status = Status.OK
    timing: str = ""

    def __post_init__(self) -> None:
        # a plain string from the worker's pipe becomes a Status; an unknown one is a bug, raise
        self.status = Status(self.status)


class Measurer(ABC):
    """The three calls of one search: setup once, measure each candidate, confirm the finalists."""

    @abstractmethod
    def setup(self, key: Key, dtype: str, seed: int = 0) -> Setup:
        """Inputs for the key, and the baselines timed on them."""

    @abstractmethod
    def measure(self, config: Config) -> Result:
        """One config checked against the reference, then timed."""

    @abstractmethod
    def confirm(self, configs: list[Config], rounds: int, skip: list[str] = ()) -> dict | None:
        """The finalists and the baselines (less `skip`) timed side by side:
        {"configs": [µs per config], "baselines": {name: µs}}, or None where this measurer has
        no such pass (the search then keeps its own timings)."""
