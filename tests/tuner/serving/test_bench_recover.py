"""tuner bench-report: a killed bench's finished engines reported as the bench would have."""

import json

import pytest

from tests.tuner.serving.test_bench import _mode
from tuner.errors import UserError
from tuner.serving import bench as flow
from tuner.serving.bench_recover import UNFINISHED, read_rounds, recover
from tuner.serving.bench_report import agreement_lines


def _finished(folder, result):
    """An engine's folder as run_mode leaves it: its log and the engine's own result.json."""
    folder.mkdir(parents=True)
    (folder / "engine.log").write_text("INFO engine started\n")
    (folder / "result.json").write_text(json.dumps({k: v for k, v in result.items() if k != "events"}))


def _killed_bench(out):
    """Session 16's run: rounds 1 and 2 whole, round 3's native done and its tuned engine killed."""
    rounds = [[{**_mode("native", 204.0, 5690.0, 107.0), "round": 1},
               {**_mode("tuned", 215.0, 5700.0, 83.0, 0.05, 2, 1), "round": 1, "route_within": 1.03}],
              [{**_mode("tuned", 214.0, 5740.0, 45.0, 0.05, 2, 1), "round": 2, "route_within": 1.03},
               {**_mode("native", 200.0, 5690.0, 43.0), "round": 2}],
              [{**_mode("native", 204.0, 5640.0, 44.0), "round": 3}]]
    out.mkdir()
    for rs in rounds:
        for r in rs:
            _finished(out / (r["mode"] if r["round"] == 1 else f"{r['mode']}.r{r['round']}"), r)
    flow.write_modes(out, rounds)
    (out / "tuned.r3").mkdir()
    (out / "tuned.r3" / "engine.log").write_text("INFO loading weights\n")  # killed here
    return rounds


def test_a_killed_bench_reports_what_the_bench_would_have(tmp_path):
    rounds = _killed_bench(tmp_path / "bench")
    rep = recover(tmp_path / "bench")
    whole = flow.report_of(rounds)  # the report from the engines' results as the bench held them
    assert rep["runs"] == whole["runs"]
    assert rep["agreement"] == whole["agreement"]  # the logprobs came back from each result.json
    assert rep["agreement"]["tuned"]["top1_agreement"] == pytest.approx(0.98)
    assert rep["errors"] == {"tuned (round 3)": UNFINISHED}
    tuned1 = next(r for r in rep["runs"] if r["mode"] == "tuned" and r["concurrency"] == 1)
    assert tuned1["vs_native_rounds"] == pytest.approx([215 / 204, 214 / 200])
    assert tuned1["route_within"] == 1.03
    lines = agreement_lines(rep)
    assert "  tuned, 1 concurrent: 1.062x native, rounds 1.054 1.070 (in 2 of 3)" in lines
    assert f"tuned (round 3): FAILED: {UNFINISHED}" in lines
    assert all(len(line) <= 80 for line in lines if line.startswith("  "))


def test_modes_json_is_replaced_whole(tmp_path):
    """A bench killed while writing modes.json keeps the previous list (BENCH_LIMIT kills it)."""
    rounds = _killed_bench(tmp_path / "bench")
    flow.write_modes(tmp_path / "bench", rounds[:1])
    assert [p.name for p in (tmp_path / "bench").glob("modes.json*")] == ["modes.json"]
    assert len(read_rounds(tmp_path / "bench")[0]) == 1


def test_a_broken_result_of_a_finished_engine_is_named(tmp_path):
    _killed_bench(tmp_path / "bench")
    (tmp_path / "bench" / "native.r2" / "result.json").write_text('{"mode": "nat')
    with pytest.raises(UserError, match=r"native\.r2/result\.json is not JSON"):
        recover(tmp_path / "bench")


def test_engines_compared_keep_their_labels(tmp_path):
    out = tmp_path / "fs"
    rounds = [[{**_mode("tuned", 210.0, 5600.0, 60.0), "label": "vllm/tuned", "engine_name": "vllm"},
               {**_mode("tuned", 205.0, 5500.0, 70.0), "label": "flagscale/tuned", "engine_name": "flagscale"}]]
    out.mkdir()
    _finished(out / "vllm-tuned", rounds[0][0])
    flow.write_modes(out, [rounds[0][:1]])  # as bench after each engine: flagscale's started, never finished
    (out / "flagscale-tuned").mkdir()
    (out / "flagscale-tuned" / "engine.log").write_text("")
    got, unfinished = read_rounds(out)
    assert [r["label"] for r in got[0]] == ["vllm/tuned"]
    assert got[0][0]["prompt_logprobs"] == rounds[0][0]["prompt_logprobs"]
    assert unfinished == {"flagscale/tuned": UNFINISHED}


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "is not a folder"),
    (lambda p: p.mkdir(), "no modes.json"),
    (lambda p: (p.mkdir(), (p / "modes.json").write_text('[{"mode": "nat')), "is not JSON"),
    (lambda p: (p.mkdir(), (p / "modes.json").write_text("[]")), "lists no engine"),
])
def test_what_is_not_a_bench_folder_is_refused(tmp_path, make, words):
    make(tmp_path / "b")
    with pytest.raises(UserError, match=words):
        recover(tmp_path / "b")


def test_the_command_prints_the_table_and_refuses_a_wrong_folder(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    _killed_bench(tmp_path / "bench")
    res = CliRunner().invoke(app, ["bench-report", str(tmp_path / "bench")], env={"COLUMNS": "80"})
    assert res.exit_code == 1, res.output  # as bench: an engine never finished
    assert "tuned, 64 concurrent" in res.output and "tuned (round 3): FAILED" in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    as_json = CliRunner().invoke(app, ["bench-report", str(tmp_path / "bench"), "--json"])
    assert json.loads(as_json.output)["rounds"] == 3
    bad = CliRunner().invoke(app, ["bench-report", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "is not a folder" in bad.output
