"""Which tuned M serves which runtime M: pure functions shared by every injector."""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from fractions import Fraction


def nearest_m(tuned: Sequence[int], m: int) -> int:
    """The tuned M closest to `m` in log space; a tie goes to the smaller one.

    Log space because GEMM/MoE behaviour changes with the order of magnitude of M
    (M=3 is much more like M=2 than like M=64), not with its absolute distance.
    """
    if not tuned:
        raise ValueError("no tuned M to choose from")
    return _nearest_sq(tuned, m * m)


def _nearest_sq(tuned: Sequence[int], target_sq: int) -> int:
    """Nearest tuned M to sqrt(target_sq) in log space, computed exactly (no float ties)."""
    # |ln t - ln x| ordered like the ratio max(t, x) / min(t, x); squared to stay integer.
    def dist(t: int) -> Fraction:
        return Fraction(max(t * t, target_sq), min(t * t, target_sq))

    return min(sorted(tuned), key=dist)


def plan_buckets(
    tuned: Sequence[int], max_tokens: int, bucket: Callable[[int], Hashable]
) -> dict[Hashable, int]:
    """Runtime cache key of M (after the tuner's strategy, e.g. align32) -> tuned M.

    Several M share one key when the strategy rounds, so the key can hold one config
    only: a tuned M that falls inside the bucket wins (the smallest, which is the
    decode case), otherwise the tuned M nearest to the bucket's middle (log space).
    """
    members: dict[Hashable, list[int]] = {}
    for m in range(1, max_tokens + 1):
        members.setdefault(bucket(m), []).append(m)
    tuned_set = set(tuned)
    plan: dict[Hashable, int] = {}
    for key, ms in members.items():
        inside = [m for m in ms if m in tuned_set]
        if inside:
            plan[key] = min(inside)
        else:
            plan[key] = _nearest_sq(tuned, ms[0] * ms[-1])  # geometric middle of the bucket
    return plan

