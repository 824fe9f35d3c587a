import math

import pytest

from tuner.inject._select import nearest_m, plan_buckets


def test_nearest_is_log_space_and_ties_go_down():
    assert nearest_m([1, 64], 7) == 1  # 7/1 < 64/7
    assert nearest_m([1, 64], 9) == 64  # 64/9 < 9/1, though 9 is nearer 1 linearly
    assert nearest_m([2, 8], 4) == 2  # exact tie in log space -> smaller
    assert nearest_m([16], 10_000) == 16
    with pytest.raises(ValueError):
        nearest_m([], 3)


def test_buckets_prefer_a_tuned_m_inside():
    def align32(m):  # FlagGems' align32 strategy
        return math.ceil(m / 32) * 32

    plan = plan_buckets([1, 16, 100], 128, align32)
    assert plan == {32: 1, 64: 100, 96: 100, 128: 100}  # 32: 1 and 16 inside -> smallest

