import json
import sqlite3

import pytest

from tests.tuner.tuning.faulty_kernel import Faulty
from tuner.tuning.budget import Budget
from tuner.tuning.candidates import canon_text, grid_configs
from tuner.tuning.measurer import Measurer, Result, Setup, Status
from tuner.tuning.replay import ReplayMeasurer
from tuner.tuning.search import EventKind, run_search
from tuner.tuning.worker import WorkerClient


def _measurer_without(method):
    calls = {
        "setup": lambda self, key, dtype, seed=0: Setup(),
        "measure": lambda self, config: Result(ok=True, time_us=1.0),
        "confirm": lambda self, configs, rounds, skip=(): None,
    }
    del calls[method]
    return type(f"No_{method}", (Measurer,), calls)


@pytest.mark.parametrize("method", ["setup", "measure", "confirm"])
def test_a_measurer_lacking_a_method_is_refused(method):
    with pytest.raises(TypeError, match=method):
        _measurer_without(method)()


def test_the_worker_client_and_the_replay_are_measurers():
    assert issubclass(WorkerClient, Measurer) and isinstance(ReplayMeasurer({}), Measurer)
    assert ReplayMeasurer({}).confirm([{"a": 1}], rounds=5) is None  # no side-by-side pass on a recording


def test_statuses_and_event_kinds_are_the_strings_stored_before():
    assert [s.value for s in Status] == ["ok", "failed", "wrong", "crashed", "hang", "invalid", "interrupted", "unused"]
    assert [k.value for k in EventKind] == ["measured", "failed", "invalid", "duplicate"]
    assert Status.HANG == "hang" and "crashed" == Status.CRASHED and EventKind.DUPLICATE == "duplicate"
    assert json.dumps({"status": Status.WRONG}) == '{"status": "wrong"}'


def test_result_status_from_a_plain_string():
    assert Result(ok=False, status="crashed").status is Status.CRASHED
    assert Result(ok=True).status is Status.OK
    with pytest.raises(ValueError):
        Result(ok=False, status="exploded")


class HalfInvalid(Faulty):
    def invalid_reason(self, key, config, dtype, device, arch=9):
        return "scale 3 is refused" if config["scale"] == 3 else None


def test_stored_statuses_are_plain_strings(tmp_path):
    """Optuna's user attrs in the database hold the same JSON strings as before the Enum."""
    kernel = HalfInvalid()
    times = {canon_text(c): 10.0 + i for i, c in enumerate(grid_configs(kernel, (8,), "fp32", "cpu")[::2])}
    db = tmp_path / "s.db"
    run_search(kernel=kernel, key=(8,), dtype="fp32", device="cpu", storage=f"sqlite:///{db}", study_name="s",
               measurer=ReplayMeasurer(times), sampler="random", budget=Budget(trials=6), seed=0)
    with sqlite3.connect(db) as con:
        stored = {v for (v,) in con.execute("select value_json from trial_user_attributes where key = 'status'")}
    assert stored == {'"ok"', '"failed"', '"invalid"'}
