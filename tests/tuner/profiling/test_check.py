"""The consistency-check harness on CPU: real recorded inputs, real subprocesses, real compare.

FlagGems kernels cannot run without a GPU, so these tests plug in candidate implementations from
tests/tuner/profiling/check_candidates.py instead: real code that is correct (float64 then rounded), wrong
(additions 5% off), dies (os._exit on matrix products), raises a CUDA error, or hangs. They test
the harness (capture, isolation, crash naming, restart after a crash, tolerances), not FlagGems.
"""

import pytest
import torch

from tuner.profiling.check import Capture, check_steps, compare, flaggems_table, op_key
from tuner.profiling.workload import RequestOptions, build_model, build_requests

C = "tests.tuner.profiling.check_candidates:"


@pytest.fixture(scope="module")
def steps():
    model = build_model(0.02, torch.float32, "cpu", components=["llm"])
    return build_requests(model, "text", RequestOptions(prompt_tokens=8, decode_batches=(1,), decode_steps=2))


def test_flaggems_table_is_read_from_its_source():
    t = flaggems_table()
    if not t:
        pytest.skip("flag_gems not installed")
    assert t["mm"] == "mm" and t["add.Tensor"] == "add" and t["_to_copy"] == "to_copy" and len(t) > 300


def test_capture_records_backend_ops_once_per_signature(steps):
    cap = Capture({"mm": "mm", "addmm": "addmm", "rsqrt": "rsqrt"}, max_per_op=2)
    with cap:
        for s in steps:
            s.run()
    ops = [r.op for r in cap.records]
    assert set(ops) == {"mm", "addmm", "rsqrt"}  # linear is decomposed as the backend sees it
    assert ops.count("mm") == 2 and ops.count("rsqrt") == 2  # capped per op
    assert cap.stats.seen_ops["mm"] > 2
    mm = next(r for r in cap.records if r.op == "mm")
    a, b = mm.args
    assert a.device.type == "cpu" and b.stride() == (1, b.shape[0])  # nn.Linear's transposed weight kept
    assert "strides" in mm.inputs


def test_capture_byte_cap_drops_large_inputs(steps):
    cap = Capture({"mm": "mm"}, max_record_bytes=1)
    with cap:
        steps[0].run()
    assert not cap.records and cap.stats.dropped


def test_correct_candidate_passes(steps):
    rep = check_steps(steps, C + "float64_reference", "cpu", ops=["mm", "addmm", "rsqrt", "cat"], jobs=2)
    assert rep.results and all(r.status == "pass" for r in rep.results), rep.results
    assert all(r.max_abs_error is not None and r.rel_error < 1e-5 for r in rep.results)
    assert rep.exclude() == []


def test_wrong_candidate_is_a_mismatch_with_its_error(steps):
    rep = check_steps(steps, C + "wrong_add", "cpu", ops=["add.Tensor", "mm"], jobs=2)
    adds = [r for r in rep.results if r.op == "add.Tensor"]
    floats = [r for r in adds if "float32" in r.inputs.split(",")[0]]
    assert floats and all(r.status == "mismatch" and r.rel_error == pytest.approx(0.05, rel=1e-3) for r in floats)
    assert all(r.status == "pass" for r in rep.results if r.op == "mm")
    assert rep.exclude() == ["add"]


def test_dying_and_faulting_candidates_are_crashes_not_fatal(steps):
    rep = check_steps(steps, C + "dies_on_mm", "cpu", ops=["mm", "rsqrt"], jobs=2)
    mm = [r for r in rep.results if r.op == "mm"]
    assert len(mm) == 3 and all(r.status == "crash" and "exited with code 7" in r.detail for r in mm)
    assert all(r.status == "pass" for r in rep.results if r.op == "rsqrt")
    rep = check_steps(steps, C + "cuda_error_on_mul", "cpu", ops=["mul.Tensor"])
    assert len(rep.results) == 3  # each input in turn, the process restarted after each fault
    assert all(r.status == "crash" and "illegal memory access" in r.detail for r in rep.results)


def test_hang_is_a_crash_after_the_timeout(steps):
    rep = check_steps(steps, C + "hangs", "cpu", ops=["argmax"], timeout_s=3)
    assert rep.results and all(r.status == "crash" and "no result within 3 s" in r.detail for r in rep.results)


def test_compare_tolerances_follow_the_dtype():
    x = torch.randn(64, 64, dtype=torch.float64)
    for dtype, ok, bad in ((torch.bfloat16, 1e-2, 5e-2), (torch.float16, 1e-3, 1e-2), (torch.float32, 1e-5, 1e-3)):
        n = x.to(dtype)
        scale = float(n.abs().max())
        assert compare(n, (x + ok * scale * 0.9).to(dtype))[0] == "pass"
        status, err, rel, detail = compare(n, n + torch.tensor(bad * scale, dtype=dtype))
        assert status == "mismatch" and rel > ok and "max abs error" in detail
    assert compare(torch.tensor([1, 2]), torch.tensor([1, 3]))[0] == "mismatch"
    assert compare(torch.tensor([float("nan")]), torch.tensor([float("nan")]))[0] == "pass"
    assert compare(torch.tensor([1.0]), torch.tensor([float("nan")]))[0] == "mismatch"
    assert compare(torch.zeros(2, 3), torch.zeros(3, 2))[0] == "mismatch"


def test_op_key_names():
    assert op_key(torch.ops.aten.mm.default) == "mm" and op_key(torch.ops.aten.add.Tensor) == "add.Tensor"
