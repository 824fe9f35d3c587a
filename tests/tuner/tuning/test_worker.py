from tuner.tuning.worker import WorkerClient

REF = "tests.tuner.tuning.faulty_kernel:Faulty"


def test_failures_are_recorded_and_the_worker_recovers():
    with WorkerClient(REF, "cpu", measure_timeout_s=10) as w:
        setup = w.setup((16,), "fp32")
        assert setup.baselines_us["native"] > 0
        ok = w.measure({"variant": "good", "scale": 1})
        assert ok.ok and ok.time_us > 1000 * 0.5 and ok.rel_error < 1e-5

        raised = w.measure({"variant": "raises", "scale": 1})
        assert not raised.ok and raised.status == "failed" and "cannot run" in raised.reason

        wrong = w.measure({"variant": "wrong", "scale": 1})
        assert not wrong.ok and wrong.status == "wrong" and "rel error" in wrong.reason

        died = w.measure({"variant": "dies", "scale": 1})
        assert not died.ok and died.status == "crashed" and "exit code 7" in died.reason

        # a fresh worker took over, set up for the same key without re-timing the baselines
        again = w.measure({"variant": "good", "scale": 2})
        assert again.ok and w.restarts == 1


def test_a_hang_is_killed_and_recorded():
    with WorkerClient(REF, "cpu", measure_timeout_s=3) as w:
        w.setup((8,), "fp32")
        hung = w.measure({"variant": "hangs", "scale": 1})
        assert not hung.ok and hung.status == "hang"
        assert w.measure({"variant": "good", "scale": 1}).ok


def test_confirm_times_finalists_beside_the_baselines():
    with WorkerClient(REF, "cpu", measure_timeout_s=10) as w:
        w.setup((16,), "fp32")
        side = w.confirm([{"variant": "good", "scale": 3}, {"variant": "good", "scale": 1}], rounds=3)
        slow, fast = side["configs"]
        assert set(side["baselines"]) == {"native"}
        # each config's sleep is its own: 3 ms and 1 ms, the baseline has none
        assert slow > 3000 * 0.9 and 1000 * 0.9 < fast < slow and side["baselines"]["native"] < fast
        assert w.confirm([{"variant": "raises", "scale": 1}], rounds=2) is None
        assert w.confirm([{"variant": "good", "scale": 1}], rounds=1, skip=["native"])["baselines"] == {}
