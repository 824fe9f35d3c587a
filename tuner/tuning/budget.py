"""How long a search may go on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Budget:
    trials: int | None = 50  # measured configs over the whole study (failures count, duplicates and invalid do not)
    timeout_s: float | None = None
    patience: int | None = None  # stop after this many measured trials without a 0.5% gain

    def stop_reason(self, *, done: int, in_flight: int, elapsed_s: float, since_gain: int | None) -> str | None:
        """Why the search must ask no more, or None while budget is left.

        done: measured configs (failures included); in_flight: asked and not measured yet, they
        will count; since_gain: measured since the last gain, None while nothing is measured.
        """
        if self.trials is not None and done + in_flight >= self.trials:
            return "trials"
        if self.timed_out(elapsed_s):
            return "timeout"
        if self.patience is not None and since_gain is not None and since_gain >= self.patience:
            return f"no gain in {self.patience} trials"
        return None

    def timed_out(self, elapsed_s: float) -> bool:
        return self.timeout_s is not None and elapsed_s >= self.timeout_s
