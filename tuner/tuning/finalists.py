"""The finalists' side-by-side pass after the search.

The search times each config once, minutes apart from the baselines; a clock or power state can
move in between. The best few and the runtime's own pick are re-timed beside the baselines and
the fastest of that one pass wins, so stored ratios always come from one side-by-side pass.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from tuner.tuning.history import Best, History
from tuner.tuning.measurer import Measurer

CONFIRM_ROUNDS = 5
FINALISTS = 3  # best configs of the search re-timed side by side (plus the runtime's own pick),
# and any other within NEAR of the search's best, up to MAX_FINALISTS: the search times a config
# once after the GPU idled (H200: boost clock, 1980 MHz), the pass back to back (power-capped:
# 1425-1680 MHz on the M=4096 keys), and the two set kernels unevenly apart: on down at M=4096 tuned / cuBLAS was
# 1.021 in the search's kind of timing and 0.963 in the pass's (tuner.benchmarks.clock_probe,
# results/gemm_h200/session17): configs within a few % of the best can swap places
NEAR = 1.08
MAX_FINALISTS = 8


class SideBySide(NamedTuple):
    best: Best
    baselines_us: dict[str, float]


def finalists(history: History, untuned: list[str]) -> list[str]:
    """The FINALISTS fastest measured configs and the others within NEAR of the fastest (at most
    MAX_FINALISTS in all), then the runtime's own picks that were measured."""
    done = sorted(history.measured())
    near = sum(1 for us, _ in done if us <= done[0][0] * NEAR)
    top = [text for _, text in done[:max(FINALISTS, min(near, MAX_FINALISTS))]]
    measured = {text for _, text in done}
    return top + [t for t in dict.fromkeys(untuned) if t in measured and t not in top]


def side_by_side(measurer: Measurer, history: History, untuned: list[str], skip: list[str]) -> SideBySide | None:
    """The fastest finalist of the pass and the baselines' times in it; None when the measurer
    gave no side-by-side timings. untuned: the runtime's picks as canonical texts."""
    texts = finalists(history, untuned)
    side = measurer.confirm([json.loads(t) for t in texts], CONFIRM_ROUNDS, skip=skip)
    if not side:
        return None
    us, text = min(zip(side["configs"], texts))
    attrs = history.get(text).attrs
    return SideBySide(Best(us, json.loads(text), attrs.get("rel_error"), attrs.get("max_abs_error")),
                      side["baselines"])
