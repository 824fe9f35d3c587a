import math

import pytest

from tuner.inject._select import assign_ms, nearest_m, plan_buckets, ranges


def test_nearest_is_log_space_and_ties_go_down():
    assert nearest_m([1, 64], 7) == 1  # 7/1 < 64/7
    assert nearest_m([1, 64], 9) == 64  # 64/9 < 9/1, though 9 is nearer 1 linearly
    assert nearest_m([2, 8], 4) == 2  # exact tie in log space -> smaller
    assert nearest_m([16], 10_000) == 16
    with pytest.raises(ValueError):
        nearest_m([], 3)


def test_assign_covers_every_m():
    a = assign_ms([1, 16, 256], 300)
    assert sorted(a) == list(range(1, 301))
    assert a[1] == 1 and a[4] == 1 and a[5] == 16 and a[64] == 16 and a[65] == 256
    with pytest.raises(ValueError):
        assign_ms([1], 0)


def test_buckets_prefer_a_tuned_m_inside():
    def align32(m):  # FlagGems' align32 strategy
        return math.ceil(m / 32) * 32

    plan = plan_buckets([1, 16, 100], 128, align32)
    assert plan == {32: 1, 64: 100, 96: 100, 128: 100}  # 32: 1 and 16 inside -> smallest


def test_ranges_are_maximal_runs():
    a = assign_ms([1, 16, 256], 300)
    assert ranges(a, [16]) == [(5, 64, 16)]
    assert ranges(a, [1, 256]) == [(1, 4, 1), (65, 300, 256)]
