import pytest

from tuner.tuning.budget import Budget


def reason(budget, done=0, in_flight=0, elapsed_s=0.0, since_gain=None):
    return budget.stop_reason(done=done, in_flight=in_flight, elapsed_s=elapsed_s, since_gain=since_gain)


def test_trials_count_the_candidates_in_flight():
    b = Budget(trials=5)
    assert reason(b, done=3, in_flight=1) is None
    assert reason(b, done=3, in_flight=2) == "trials"
    assert reason(b, done=5) == "trials"


def test_timeout():
    b = Budget(trials=None, timeout_s=10)
    assert reason(b, elapsed_s=9.9) is None
    assert reason(b, elapsed_s=10.0) == "timeout"
    assert b.timed_out(10.0) and not b.timed_out(9.9)
    assert not Budget(trials=None).timed_out(1e9)


def test_patience_waits_for_a_first_measurement():
    b = Budget(trials=None, patience=4)
    assert reason(b, done=10, since_gain=None) is None  # nothing measured yet: no gain to wait on
    assert reason(b, done=10, since_gain=3) is None
    assert reason(b, done=10, since_gain=4) == "no gain in 4 trials"


def test_no_limit_never_stops():
    assert reason(Budget(trials=None), done=10**6, in_flight=8, elapsed_s=1e9, since_gain=10**6) is None


@pytest.mark.parametrize("budget, expected", [
    (Budget(trials=1, timeout_s=1, patience=1), "trials"),
    (Budget(trials=None, timeout_s=1, patience=1), "timeout"),
])
def test_the_first_reason_in_order_is_reported(budget, expected):
    assert reason(budget, done=1, elapsed_s=2, since_gain=1) == expected
