"""`tuner serve` preparation on a real SQLite database: which stored results are used, the
exclude list (consistency check + ops whose tuned kernel is still slower than native), the
runtime folder, and the CLI's answers to bad input. Nothing is launched (--dry-run)."""

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from db import open_database, queries
from tests.conftest import model_folder, needs_vllm, result, run_py
from tests.tuner.inject.conftest import H100, env_of
from tuner.errors import UserError
from tuner.inject.plugin import read_state
from tuner.serving.flow import ServeRequest, leave_native, prepare

REPO = Path(__file__).resolve().parents[3]


def rec(kernel, M, tuned, native, variant=None):
    return {"kernel": kernel, "key": {"M": M}, "time_us": tuned, "native_us": native,
            "config": {"variant": variant or f"fg_{kernel}"}}


def test_leave_native_needs_every_key_slower():
    recs = [rec("addmm", 1, 14.3, 7.0), rec("addmm", 2048, 99.9, 76.6),   # all slower: native
            rec("bmm", 1, 3148.8, 3174.5), rec("bmm", 10, 3297.7, 3231.3),  # one key wins: FlagGems
            rec("mm", 1, 20.0, 10.0)]                                         # not a one-op kernel here
    assert leave_native(recs) == ["addmm"]
    assert leave_native([rec("addmm", 1, 14.3, None)]) == []  # never timed against native: no claim
    assert leave_native([]) == []
    # with --route-within: what the router routes is what keeps an op with FlagGems
    near = [rec("addmm", 64, 10.1, 10.0)]  # 1% slower
    assert leave_native(near) == ["addmm"] and leave_native(near, 1.02) == []
    small_win = [rec("addmm", 64, 9.9, 10.0)]  # 1% faster: no route when a 2% margin is asked
    assert leave_native(small_win) == [] and leave_native(small_win, 0.98) == ["addmm"]


def _db_with(tmp_path, *recs) -> str:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    db = open_database(url)
    with db.session() as s:
        env = queries.get_or_create_environment(s, "h100", {**env_of(H100), "device": "cuda", "python": "3.12"})
        for kernel, key, tuned, native in recs:
            run = queries.start_run(s, env, kernel=kernel, sampler="tpe", device="cuda", compile_workers=0)
            queries.upsert_best(s, environment_id=env.id, kernel=kernel, key_values=key, dtype="bf16",
                                run_id=run.id, kernel_source_hash="h",
                                config={"variant": f"fg_{kernel}", "BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64,
                                        "BLOCK_SIZE_K": 64, "num_warps": 4, "num_stages": 3},
                                time_us=tuned, untuned_us=tuned * 1.2, native_us=native, speedup_vs_untuned=1.2,
                                speedup_vs_native=native / tuned, max_abs_error=0.0, rel_error=1e-3,
                                trials_used=6, timing="cuda-graph", study_name="s")
        s.commit()
    db.dispose()
    return url


ADDMM_SLOW = ("addmm", {"M": 16, "N": 512, "K": 3584, "BT": 1}, 14.7, 7.3)


def test_prepare_leaves_slower_ops_native(tmp_path):
    url = _db_with(tmp_path, ADDMM_SLOW)
    base = dict(model="Qwen/whatever", use_tuned=True, db_url=url, allow_foreign=True,
                runtime_dir=str(tmp_path / "rt"), exclude=["mul"], dry_run=True)
    with pytest.warns(RuntimeWarning, match="FOREIGN"):  # this host has no H100
        p = prepare(ServeRequest(**base))
    assert p.records == 1 and p.exclude == ["mul", "addmm"] and p.left_native == ["addmm"]
    state = json.loads((tmp_path / "rt" / "state.json").read_text())
    assert state["exclude_ops"] == ["addmm", "mul"]  # stored sorted
    with pytest.warns(RuntimeWarning, match="FOREIGN"):
        kept = prepare(ServeRequest(**base, native_when_faster=False))
    assert kept.exclude == ["mul"] and kept.left_native == []
    with pytest.warns(RuntimeWarning, match="FOREIGN"):  # already excluded by the user: said once
        again = prepare(ServeRequest(**{**base, "exclude": ["addmm"]}))
    assert again.exclude == ["addmm"] and again.left_native == []
    untuned = prepare(ServeRequest(**{**base, "use_tuned": False}))  # nothing injected: nothing to judge
    assert untuned.records == 0 and untuned.exclude == ["mul"] and untuned.routes == {}


def test_tuned_vllm_registers_only_routed_flaggems_kernels(tmp_path):
    """vLLM compiles the model: with tuned configs FlagGems registers no aten op and only the GEMM
    router reaches it; untuned (and eager engines) keep FlagGems minus the excluded ops."""
    url = _db_with(tmp_path, ADDMM_SLOW)
    base = dict(model="Qwen/whatever", db_url=url, allow_foreign=True, runtime_dir=str(tmp_path / "rt"),
                exclude=["mul"], dry_run=True)
    cases = [({"use_tuned": True, "engine": "vllm"}, "routed"), ({"use_tuned": False, "engine": "vllm"}, "all")]
    for change, scope in cases:
        with pytest.warns(RuntimeWarning, match="FOREIGN") if change["use_tuned"] else contextlib.nullcontext():
            prepare(ServeRequest(**base, **change))
        assert json.loads((tmp_path / "rt" / "state.json").read_text())["flaggems_ops"] == scope, change


def test_prepare_refuses_results_of_another_gpu_without_allow_foreign(tmp_path):
    url = _db_with(tmp_path, ADDMM_SLOW)
    with pytest.raises(UserError, match="no tuned results measured on this GPU"):
        prepare(ServeRequest(model="m", use_tuned=True, db_url=url, runtime_dir=str(tmp_path / "rt")))
    assert not (tmp_path / "rt").exists()


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "serve", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_dry_run_says_what_is_left_native(tmp_path):
    url = _db_with(tmp_path, ADDMM_SLOW)
    r = _cli("Qwen/x", "--use-tuned", "--allow-foreign", "--db", url, "--runtime-dir", str(tmp_path / "rt"),
             "--exclude", "mul", "--dry-run", "--", "--max-model-len", "4096")
    assert r.returncode == 0, r.stderr
    assert "1 tuned configs, FlagGems excluded ops: mul, addmm (addmm: tuned still slower than native)" in r.stderr
    # the stored GEMM key's route, before any engine starts (14.7 us tuned vs cuBLAS's 7.3: native)
    assert "GEMM keys to tuned kernels: none; native 1 (--route-within 1;" in r.stderr
    assert max(len(line) for line in r.stderr.splitlines() if "GEMM keys" in line) <= 80
    out = json.loads(r.stdout)
    # the engine's arguments, then tuner's --max-tokens as vLLM's batched-token bound (one setting)
    assert out["command"][-4:] == ["--max-model-len", "4096", "--max-num-batched-tokens", "8192"]
    assert out["env"]["TUNER_RUNTIME_DIR"] == str((tmp_path / "rt").resolve())


@pytest.mark.parametrize("args, words", [
    (["m", "--max-tokens", "0", "--dry-run"], "--max-tokens must be a positive number"),
    (["m", "--engine", "tgi", "--dry-run"], "unknown engine 'tgi'"),
    (["/no/such/folder", "--engine", "transformers", "--dry-run"], "does not exist"),
    (["m", "--use-tuned", "--route-within", "2", "--dry-run"], "--route-within takes a factor from 0.5 to 1.5"),
    (["m", "--route-within", "1.02", "--dry-run"], "--route-within applies to tuned routes: add --use-tuned"),
    # a typo would leave the op on FlagGems (its enable() ignores unknown names): refused, nearest named
    (["m", "--exclude", "mul,admm", "--dry-run"], "admm (did you mean addmm"),
])
def test_cli_bad_input_is_one_sentence_exit_2(tmp_path, args, words):
    r = _cli(*args, "--runtime-dir", str(tmp_path / "rt"), "--db", str(tmp_path / "none.db"))
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert not (tmp_path / "rt").exists()


def test_cli_route_within_reaches_the_runtime_state(tmp_path):
    url = _db_with(tmp_path, ADDMM_SLOW)
    r = _cli("Qwen/x", "--use-tuned", "--allow-foreign", "--db", url, "--runtime-dir", str(tmp_path / "rt"),
             "--route-within", "1.02", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert read_state(tmp_path / "rt")["route_within"] == 1.02


def _db_with_checks(tmp_path) -> str:
    """Consistency verdicts of this machine's CUDA environment (FlagGems and another candidate) and
    of another machine's: only this machine's FlagGems verdicts make serve's exclude list."""
    from db import profile_queries as pq
    from tuner import fingerprint as fp

    url = f"sqlite:///{tmp_path / 'checks.db'}"
    db = open_database(url)
    here = fp.collect("cuda")
    with db.session() as s:
        mine = queries.get_or_create_environment(s, here.digest(), here.as_dict())
        other = queries.get_or_create_environment(s, "h100", {**env_of(H100), "device": "cuda", "python": "3.12"})
        pq.add_consistency_results(s, mine, [
            {"op": "aten::mul.Tensor", "gems_fn": "mul", "inputs": "a", "status": "mismatch"},
            {"op": "aten::add.Tensor", "gems_fn": "add", "inputs": "a", "status": "pass"},
            {"op": "aten::silu", "gems_fn": "silu", "inputs": "a", "status": "crash"},
            {"op": "aten::silu", "gems_fn": "silu", "inputs": "a", "status": "pass"},  # newest verdict wins
        ])
        pq.add_consistency_results(s, mine, [{"op": "aten::gelu", "gems_fn": "gelu", "inputs": "a",
                                              "status": "crash"}], candidate="tests:candidate")
        pq.add_consistency_results(s, other, [{"op": "aten::exp", "gems_fn": "exp", "inputs": "a",
                                               "status": "mismatch"}])
        s.commit()
    db.dispose()
    return url


def test_prepare_takes_the_stored_exclude_list_of_this_machine(tmp_path):
    url = _db_with_checks(tmp_path)
    p = prepare(ServeRequest(model="m", db_url=url, runtime_dir=str(tmp_path / "rt"), dry_run=True))
    assert p.exclude == ["mul"] and p.left_native == []
    assert json.loads((tmp_path / "rt" / "state.json").read_text())["exclude_ops"] == ["mul"]
    given = prepare(ServeRequest(model="m", db_url=url, runtime_dir=str(tmp_path / "rt"), exclude=[]))
    assert given.exclude == []  # --exclude "" beats the stored list
    for db_url in (str(tmp_path / "none.db"), str(tmp_path)):  # no database, a folder: nothing stored
        assert prepare(ServeRequest(model="m", db_url=db_url, runtime_dir=str(tmp_path / "rt"))).exclude == []


def test_verdicts_survive_installing_vllm_or_a_new_driver(tmp_path):
    """The same GPU, torch, Triton and FlagGems with another vLLM / driver / Python is another
    fingerprint; its check still decides (before: no verdict applied, `mul` served)."""
    from db import profile_queries as pq
    from tuner import fingerprint as fp

    url = _db_with_checks(tmp_path)
    here = fp.collect("cuda").as_dict()
    db = open_database(url)
    with db.session() as s:
        later = queries.get_or_create_environment(s, "later", {**here, "vllm": "0.99", "driver": "999.1"})
        pq.add_consistency_results(s, later, [{"op": "aten::exp", "gems_fn": "exp", "inputs": "b",
                                               "status": "mismatch"}])
        s.commit()
    db.dispose()
    p = prepare(ServeRequest(model="m", db_url=url, runtime_dir=str(tmp_path / "rt"), dry_run=True))
    assert p.exclude == ["exp", "mul"]


def test_engine_modules_command_and_environment(tmp_path, monkeypatch):
    """flagscale: USE_FLAGGEMS=false (tuner's plugin alone enables FlagGems), this interpreter first
    on PATH (FlagScale runs `python` and `vllm` by name), tuner first on PYTHONPATH;
    transformers: a sitecustomize module that runs the hook, tuner importable beside it."""
    from tuner.serving import engines

    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    flagscale = engines.engine("flagscale")
    bindir = Path(sys.executable).parent
    for needs_shim, first in ((False, []), (True, [tmp_path.resolve() / "flagscale" / "bin"])):
        # with no `vllm` beside this interpreter, the shim tuner writes comes first (test_flagscale)
        monkeypatch.setattr(flagscale, "_needs_shim", lambda v=needs_shim: v)
        assert flagscale.env(tmp_path) == {
            "USE_FLAGGEMS": "false", "PATH": ":".join(map(str, [*first, bindir, "/usr/bin"])),
            "PYTHONPATH": f"{REPO}:/elsewhere"}

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = engines.engine("transformers").env(tmp_path)
    site = tmp_path / "site"
    assert env == {"PYTHONPATH": f"{site}:{REPO}:/elsewhere"}
    assert "from tuner.inject.plugin import register" in (site / "sitecustomize.py").read_text()
    assert engines.engine("vllm").env(tmp_path) == {}
    with pytest.raises(UserError, match="unknown engine 'tgi'; use one of vllm, flagscale, transformers"):
        engines.engine("tgi")


def test_serve_path_imports_no_torch(tmp_path):
    """`tuner serve --use-tuned` up to the engine's launch (records selected for this GPU by its
    NVML name, the exclude list, the runtime folder written and checked) leaves torch unloaded."""
    url = _db_with(tmp_path, ADDMM_SLOW)
    code = f"""
import sys, warnings
from tuner.serving import flow
from tuner.serving.engines import ENGINES
assert flow.stored_exclude_list({str(tmp_path / 'none.db')!r}) == []
cmd = ENGINES["vllm"].command("m", 8000, [])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # FOREIGN: the records are an H100's
    p = flow.prepare(flow.ServeRequest(model="m", use_tuned=True, db_url={url!r}, allow_foreign=True,
                                       runtime_dir={str(tmp_path / 'rt')!r}, dry_run=True))
assert p.records == 1, p
print("torch" in sys.modules, cmd[1:4])
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0 and r.stdout.split()[0] == "False", r.stdout + r.stderr


def test_max_tokens_and_vllms_batched_tokens_are_one_setting():
    from tuner.serving.engines import batch_tokens, transformers, vllm

    assert batch_tokens(vllm, None, ["--dtype", "bfloat16"]) == (
        8192, ["--dtype", "bfloat16", "--max-num-batched-tokens", "8192"])
    assert batch_tokens(vllm, 4096, []) == (4096, ["--max-num-batched-tokens", "4096"])
    assert batch_tokens(vllm, None, ["--max-num-batched-tokens=2048"]) == (2048, ["--max-num-batched-tokens=2048"])
    assert batch_tokens(vllm, None, ["--max_num_batched_tokens", "1024"])[0] == 1024  # vLLM's other spelling
    assert batch_tokens(vllm, 2048, ["--max-num-batched-tokens", "2048"])[0] == 2048
    with pytest.raises(UserError, match="one setting"):
        batch_tokens(vllm, 4096, ["--max-num-batched-tokens", "2048"])
    with pytest.raises(UserError, match="whole number"):
        batch_tokens(vllm, None, ["--max-num-batched-tokens", "many"])
    assert batch_tokens(transformers, None, ["--x"]) == (8192, ["--x"])


@needs_vllm
def test_vllm_command_is_what_vllms_own_parser_accepts(tmp_path):
    """The command `tuner serve --engine vllm` runs, parsed by vLLM's real argument parser."""
    from tuner.serving.engines import batch_tokens, vllm

    _, args = batch_tokens(vllm, None, ["--gpu-memory-utilization", "0.8"])
    cmd = vllm.command(str(tmp_path), 8123, args)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    out = run_py(f"""
        import json
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.entrypoints.common.cli_args import make_arg_parser
        a = make_arg_parser(FlexibleArgumentParser()).parse_args({cmd[3:]!r})
        print("RESULT " + json.dumps([a.model, a.port, a.max_num_batched_tokens, a.gpu_memory_utilization]))
    """, env={"VLLM_TARGET_DEVICE": "cpu"}, timeout=240)
    assert result(out) == [str(tmp_path), 8123, 8192, 0.8]


def test_serve_listens_locally_and_keeps_the_api_key_off_the_command_line(tmp_path):
    from tuner.serving.engines import vllm

    base = dict(model=str(model_folder(tmp_path)), runtime_dir=str(tmp_path / "rt"), exclude=[], dry_run=True)
    p = prepare(ServeRequest(**base))
    assert p.command[p.command.index("--host") + 1] == "127.0.0.1" and "VLLM_API_KEY" not in p.env
    keyed = prepare(ServeRequest(**base, host="0.0.0.0", api_key="k-123"))
    assert keyed.command[keyed.command.index("--host") + 1] == "0.0.0.0"
    assert keyed.env["VLLM_API_KEY"] == "k-123" and "k-123" not in " ".join(keyed.command)
    own = vllm.command(str(tmp_path), 8000, ["--host=10.0.0.1"])  # the engine's own argument wins
    assert own.count("--host") == 0 and "--host=10.0.0.1" in own
    with pytest.raises(UserError, match="takes no API key"):
        prepare(ServeRequest(**{**base, "engine": "transformers"}, api_key="k"))
    with pytest.raises(UserError, match="does not exist"):  # refused before the runtime folder is written
        prepare(ServeRequest(**{**base, "model": str(tmp_path / "missing"), "runtime_dir": str(tmp_path / "rt2")}))
    assert not (tmp_path / "rt2").exists()
    # a local folder that is no checkpoint: refused here, not by the engine after it started
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without config.json"):
        prepare(ServeRequest(**{**base, "model": str(tmp_path / "empty"), "runtime_dir": str(tmp_path / "rt2")}))
    assert not (tmp_path / "rt2").exists()


def test_dry_run_hides_the_api_key(tmp_path):
    r = _cli(str(model_folder(tmp_path)), "--runtime-dir", str(tmp_path / "rt"), "--exclude", "", "--api-key", "k-123",
             "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "k-123" not in r.stdout + r.stderr and '"VLLM_API_KEY": "***"' in r.stdout


def test_one_record_per_key_prefers_this_machines_software_then_the_newest():
    from tuner.serving.flow import one_per_key

    def r(triton, updated, M=16, cfg=1):
        return {"kernel": "mm", "key": {"M": M, "N": 8, "K": 8, "BT": 1}, "dtype": "bf16", "config": {"c": cfg},
                "updated_at": updated, "environment": {"triton": triton, "flag_gems": "5.0.2"}}

    old_same, new_other, other_key = r("3.6.0", "2026-11-01", cfg=1), r("3.7.0", "2026-11-30", cfg=2), r("3.7.0", "x", M=1)
    running = {"triton": "3.6.0", "flag_gems": "5.0.2"}
    assert one_per_key([old_same, new_other, other_key], running) == [old_same, other_key]
    assert one_per_key([old_same, new_other], {"triton": "3.8.0", "flag_gems": "5.0.2"}) == [new_other]
