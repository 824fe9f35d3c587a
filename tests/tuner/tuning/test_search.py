"""The search end to end under the Triton interpreter, and its failure handling."""

import optuna
import pytest
from optuna.trial import TrialState

from kernels import get_kernel
from tuner.tuning.budget import Budget
from tuner.tuning.search import run_search
from tuner.tuning.flow import TuneRequest, tune
from tuner.tuning.worker import WorkerClient

from db import open_database, queries


def _trials(db_url, name):
    st = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(db_url))
    return st.get_trials(deepcopy=False)


def test_interpreter_tune_stores_best_and_a_rerun_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    req = TuneRequest(op="mm", shapes=["8,64,64"], trials=4, device="cpu", seed=3, db_url=url)
    (first,) = tune(req)
    assert first.stored and first.outcome.measured == 4
    assert first.outcome.timing == "interpreter-wall"
    # stored numbers come from the side-by-side pass; the search's and the setup's are kept
    assert first.outcome.confirmed and first.outcome.search_best_us > 0
    assert set(first.outcome.setup_baselines_us) == set(first.outcome.setup.baselines_us) >= {"native"}
    db = open_database(url)
    with db.session() as s:
        (row,) = queries.best_configs(s, kernel="mm")
        assert row.key == "M=8,N=64,K=64,BT=1" and row.dtype == "fp16"
        assert row.time_us == pytest.approx(first.outcome.best_us)
        assert row.native_us > 0 and row.rel_error < 1e-2 and row.trials_used == 4
        assert row.config["variant"] == "splitk"

    (second,) = tune(TuneRequest(**{**vars(req), "trials": 8}))  # the same study goes on, to 8 in all
    assert second.outcome.study_name == first.outcome.study_name
    assert second.outcome.measured == 4 and second.outcome.trials_total == 8
    trials = _trials(url, first.outcome.study_name)
    measured = [t.user_attrs["canonical"] for t in trials
                if t.state == TrialState.COMPLETE and not t.user_attrs.get("duplicate")]
    assert len(measured) == len(set(measured)) == 8  # nothing measured twice across the two runs
    with db.session() as s:
        (row,) = queries.best_configs(s, kernel="mm")
        # the faster of the two side-by-side passes (a confirmed row is replaced only by a faster one)
        assert row.confirmed and row.time_us == pytest.approx(min(first.outcome.best_us, second.outcome.best_us))
        runs = s.query(queries.TuningRun).all()
        assert [r.status for r in runs] == ["done", "done"]


def test_duplicate_suggestion_is_not_measured(tmp_path):
    """The faulty kernel's space has 15 configs; asking for 40 measurements exhausts it, and
    every repeat is answered from the study's history instead of being measured."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    kernel = get_kernel("tests.tuner.tuning.faulty_kernel:Faulty")
    calls = []

    class Counting(WorkerClient):
        def measure(self, config):
            calls.append(tuple(sorted(config.items())))
            return super().measure(config)

    with Counting("tests.tuner.tuning.faulty_kernel:Faulty", "cpu", measure_timeout_s=2) as w:
        out = run_search(kernel=kernel, key=(8,), dtype="fp32", device="cpu", storage=url, study_name="dup",
                         measurer=w, sampler="random", budget=Budget(trials=40), seed=0)
    assert len(calls) == len(set(calls)) == out.measured <= 15
    assert out.counts["duplicate"] > 0
    assert out.stop_reason == "space exhausted"
    # every failing kind was met, recorded with its reason, and the study went on to a best
    trials = _trials(url, "dup")
    statuses = {t.user_attrs.get("status") for t in trials if t.state == TrialState.FAIL}
    assert {"failed", "crashed", "wrong", "hang"} <= statuses
    assert all(t.user_attrs.get("reason") for t in trials if t.state == TrialState.FAIL)
    assert out.best_config["variant"] == "good" and out.best_config["scale"] == 1


def test_grid_sampler_measures_every_valid_config_once(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    kernel = get_kernel("tests.tuner.tuning.faulty_kernel:Faulty")

    class OnlyGood(WorkerClient):
        pass

    with OnlyGood("tests.tuner.tuning.faulty_kernel:Faulty", "cpu", measure_timeout_s=2) as w:
        out = run_search(kernel=kernel, key=(4,), dtype="fp32", device="cpu", storage=url, study_name="grid",
                         measurer=w, sampler="grid", budget=Budget(trials=None), seed=0)
    assert out.stop_reason == "grid exhausted" and out.measured == 15 and out.counts["duplicate"] == 0


def test_gp_is_not_stuck_on_invalid_configs():
    """GPSampler ignores PRUNED trials, so it kept proposing invalid configs (on the H100 grid
    replay: 524 invalid asks for 14 measured). Told as penalised completions, it moves on."""
    from tuner.tuning.candidates import canon_text, grid_configs
    from tuner.tuning.replay import ReplayMeasurer

    kernel = get_kernel("mm")
    key = (16, 256, 512, 1)
    # a recorded table: every valid config with a time that depends on it (97% of the raw
    # space is invalid for this key on CPU, which is what trapped GP)
    times = {canon_text(c): 10.0 + c["BLOCK_N"] / 32 + c["num_stages"] + 3 * c["SPLIT_K"]
             for c in grid_configs(kernel, key, "fp16", "cpu")}
    out = run_search(kernel=kernel, key=key, dtype="fp16", device="cpu", storage=optuna.storages.InMemoryStorage(),
                     study_name="gp", measurer=ReplayMeasurer(times), sampler="gp", budget=Budget(trials=15), seed=0)
    assert out.stop_reason == "trials" and out.measured == 15
    assert out.trials_total == 15  # penalised invalid configs are not counted as measured


def test_side_by_side_pass_picks_the_winner_and_the_baselines():
    """The search's timings are one pass each; the finalists (its 3 best plus the runtime's own
    pick) are re-timed beside the baselines and the fastest of that pass is stored."""
    from tuner.tuning.candidates import canon_text, grid_configs
    from tuner.tuning.replay import ReplayMeasurer
    from tuner.tuning.measurer import Setup

    kernel = get_kernel("mm")
    key = (16, 256, 512, 1)
    grid = grid_configs(kernel, key, "fp16", "cpu")
    search_us = {canon_text(c): 10.0 + i for i, c in enumerate(grid)}  # grid[0] looks fastest
    untuned = grid[-1]  # looks slowest in the search, fastest side by side (a drifting clock)

    class Drifting(ReplayMeasurer):
        def setup(self, key, dtype, seed=0):
            return Setup(timing="replay", baselines_us={"native": 99.0}, untuned_configs=[untuned])

        def confirm(self, configs, rounds, skip=()):
            self.confirmed = [canon_text(c) for c in configs]
            return {"configs": [1.0 if c == untuned else 5.0 for c in configs], "baselines": {"native": 7.0}}

    m = Drifting(search_us)
    out = run_search(kernel=kernel, key=key, dtype="fp16", device="cpu", storage=optuna.storages.InMemoryStorage(),
                     study_name="side", measurer=m, sampler="grid", budget=Budget(trials=len(grid)))
    top3 = [canon_text(c) for c in grid[:3]]
    assert m.confirmed == top3 + [canon_text(untuned)]
    assert out.confirmed and out.best_config == untuned and out.best_us == 1.0
    assert out.search_best_us == 10.0
    assert out.setup.baselines_us == {"native": 7.0} and out.setup_baselines_us == {"native": 99.0}


def test_a_small_key_measures_its_whole_valid_space_before_space_exhausted(tmp_path):
    """mm 16,32,32 has 12 valid configs; TPE (seed 1) used to ask 400 refused ones in a row and
    stop with 0 measured. tuner now picks untried valid configs itself when the sampler is stuck."""
    from tuner.tuning.candidates import grid_configs

    kernel = get_kernel("mm")
    key = (16, 32, 32, 1)
    valid = grid_configs(kernel, key, "fp16", "cpu")
    url = f"sqlite:///{tmp_path / 't.db'}"
    with WorkerClient("kernels.mm:MM", "cpu", measure_timeout_s=60) as w:
        out = run_search(kernel=kernel, key=key, dtype="fp16", device="cpu", storage=url, study_name="small",
                         measurer=w, sampler="tpe", budget=Budget(trials=50), seed=1)
    assert out.measured == len(valid) == 12
    assert out.stop_reason == "space exhausted" and out.best_config is not None


def test_trials_is_the_studys_total_so_a_rerun_does_what_is_left(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    kernel = get_kernel("tests.tuner.tuning.faulty_kernel:Faulty")

    def run(trials):
        with WorkerClient("tests.tuner.tuning.faulty_kernel:Faulty", "cpu", measure_timeout_s=2) as w:
            return run_search(kernel=kernel, key=(8,), dtype="fp32", device="cpu", storage=url, study_name="total",
                              measurer=w, sampler="random", budget=Budget(trials=trials), seed=3)

    first = run(3)
    assert first.measured == 3 and first.trials_total == 3
    again = run(3)  # nothing left
    assert again.measured == 0 and again.stop_reason == "trials" and again.trials_total == 3
    more = run(5)
    assert more.measured == 2 and more.trials_total == 5


def test_study_name_names_the_kernel_source():
    """A kernel edit starts a new study (issue 13: a resumed study kept the old code's rel_error)."""
    from tuner.tuning.search import study_name_for

    mm = get_kernel("mm")
    name = study_name_for(mm, (16, 64, 64, 1), "fp16", "f" * 32)
    assert name == f"mm|M=16,N=64,K=64,BT=1|fp16|{'f' * 12}|src={mm.source_hash()[:8]}"

    class Edited(type(mm)):
        def source_hash(self, config=None):
            return "0123456789abcdef"

    assert study_name_for(Edited(), (16, 64, 64, 1), "fp16", "f" * 32) != name


def test_configs_near_the_search_best_are_finalists_too():
    """Beyond the 3 best, every config within 8% of the search's best is re-timed (at most 8 of
    them, the runtime's own picks on top): the search's and the pass's clocks differ, and near-ties
    can swap places."""
    from tuner.tuning import finalists as fin

    class Known:
        def __init__(self, times):
            self.times = times

        def measured(self):
            return [(us, f"c{i}") for i, us in enumerate(self.times)]

    far = Known([10.0, 11.0, 12.0, 13.0, 20.0])
    assert fin.finalists(far, []) == ["c0", "c1", "c2"]
    near = Known([10.0, 10.1, 10.2, 10.3, 10.5, 10.79, 10.81, 20.0])
    assert fin.finalists(near, ["c7"]) == ["c0", "c1", "c2", "c3", "c4", "c5", "c7"]
    crowd = Known([10.0 + i / 100 for i in range(12)])
    assert len(fin.finalists(crowd, [])) == fin.MAX_FINALISTS
    assert fin.finalists(Known([]), []) == []


def test_the_flow_keeps_a_faster_stored_row_of_another_variant(tmp_path):
    """flow._store gives the store the op's source hashes: a split-K winner slower than the stored
    persistent row of the same key (both kernels unchanged) does not replace it."""
    from db import open_database, queries
    from tuner.tuning import flow
    from tuner.tuning.history import Best

    kernel = get_kernel("mm")
    key, dtype = (16, 256, 512, 1), "fp16"
    db = open_database(str(tmp_path / "t.db"))
    with db.session() as s:
        env = queries.get_or_create_environment(s, "fp1", {"device": "cpu", "torch": "2.13", "triton": "3.6",
                                                           "python": "3.12"})
        run = queries.start_run(s, env, kernel="mm", sampler="tpe", device="cpu", compile_workers=0)
        s.commit()
        ids = dict(env_id=env.id, run_id=run.id, study_name="s", confirmed=True)
    persistent = {"variant": "persistent", "BLOCK_M": 16}
    splitk = {"variant": "splitk", "BLOCK_M": 16}
    assert kernel.source_hash(persistent) != kernel.source_hash(splitk)
    assert flow._store(db, kernel, key, dtype, Best(5.0, persistent, 0.0, 0.0), {"native": 6.0}, 3, "w", **ids)
    assert not flow._store(db, kernel, key, dtype, Best(5.5, splitk, 0.0, 0.0), {"native": 6.0}, 3, "w", **ids)
    assert flow._store(db, kernel, key, dtype, Best(4.5, splitk, 0.0, 0.0), {"native": 6.0}, 3, "w", **ids)
    db.dispose()
