"""`tuner serve --engine flagscale` against the real flag-scale 0.8.0 package (installed without its
dependencies, .ci/nodeps.txt): FlagScale's own loader and runner take the config tuner writes and
build the script and `vllm serve` command from it; the whole launch runs on CPU with a `vllm` that
records what it was started with and runs vLLM's real plugin loader (no GPU to serve on here)."""

import json
import os
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import hidden_modules, model_folder, result, run_py
from tuner.errors import UserError
from tuner.inject.plugin import read_state
from tuner.serving.flow import ServeRequest, prepare

pytest.importorskip("flag_scale", reason="flag-scale not installed (pip install --no-deps -r .ci/nodeps.txt)")
pytest.importorskip("hydra")
REPO = Path(__file__).resolve().parents[3]
CPU = {"VLLM_TARGET_DEVICE": "cpu"}  # vLLM builds its argument parser for the CPU target without a GPU
ARGS = ["--max-model-len", "4096", "--enforce-eager", "--served-model-name", "a", "--seed=-1"]


def test_flagscales_loader_and_runner_take_the_config(tmp_path, monkeypatch):
    """Hydra compose (as `flagscale serve` does), FlagScale's deploy check and SSHServeRunner, its
    run script (dry run), then its engine launcher's `vllm serve` command from the re-saved config."""
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    model = model_folder(tmp_path / "model")
    rt = tmp_path / "rt"
    p = prepare(ServeRequest(model=str(model), engine="flagscale", engine_args=ARGS, exclude=["mul"],
                             runtime_dir=str(rt), port=8123, host="0.0.0.0", api_key="k-123", dry_run=True))
    assert p.command[1:5] == ["-m", "flag_scale.flagscale.cli", "serve", "tuner"]
    conf = Path(p.command[-1])
    assert conf == rt.resolve() / "flagscale" / "conf" / "serve.yaml"
    assert read_state(rt)["exclude_ops"] == ["mul"]
    assert p.env["VLLM_API_KEY"] == "k-123" and p.env["USE_FLAGGEMS"] == "false"
    assert p.env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    out = run_py(f"""
        import json, sys
        from hydra import compose, initialize_config_dir
        from flag_scale.run import check_and_reset_deploy_config
        from flagscale.runner.runner_serve import SSHServeRunner
        with initialize_config_dir(config_dir={str(conf.parent)!r}, version_base=None):
            cfg = compose(config_name="serve")
        check_and_reset_deploy_config(cfg)
        runner = SSHServeRunner(cfg)
        runner.run(dryrun=True)
        logs = cfg.logging
        script = open(f"{{logs.scripts_dir}}/host_0_localhost_run.sh").read()
        # what flagscale/serve/run_inference_engine.py does with the config the runner re-saved
        sys.argv = ["run_inference_engine.py", "--config-path", f"{{logs.scripts_dir}}/serve.yaml"]
        from flagscale import serve
        from flagscale.utils import flatten_dict_to_args
        serve.load_args()
        args = serve.task_config.serve[0].engine_args
        cmd = ["vllm", "serve", args["model"], *flatten_dict_to_args(dict(args), ["model"])]
        print("RESULT " + json.dumps({{"script": script, "vllm": cmd, "user_script": runner.user_script,
                                      "port": runner.port}}))
    """, timeout=300)
    got = result(out)
    assert got["user_script"] == "flagscale/serve/run_inference_engine.py" and got["port"] == 8123
    assert got["vllm"] == ["vllm", "serve", str(model), "--host", "0.0.0.0", "--port", "8123", *ARGS[:-1],
                           "--seed", "-1", "--max-num-batched-tokens", "8192"]
    script = got["script"]
    for name in ("TUNER_RUNTIME_DIR", "VLLM_TUNED_CONFIG_FOLDER", "FLAGGEMS_DB_URL", "USE_FLAGGEMS"):
        assert f"export {name}={p.env[name]}" in script
    assert "ray" not in script  # one node, use_fs_serve false: no Ray
    written = [f.read_text() for f in (rt / "flagscale").rglob("*") if f.is_file()]
    assert written and not any("k-123" in text for text in written)  # the key stays in the environment


def _bin(tmp_path: Path, with_vllm: bool = True) -> Path:
    """A folder whose `python` is this interpreter and whose `vllm` (unless with_vllm is false)
    records its arguments and environment, prints them, runs vLLM's real plugin loader, and sleeps
    if asked to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(os.path.realpath(sys.executable))
    if not with_vllm:
        return bindir
    (bindir / "vllm").write_text("""#!/bin/sh
exec python -c '
import json, os, sys, time
json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, open(os.environ["RECORD"], "w"))
print("recorded vllm", *sys.argv[1:], flush=True)
from vllm.plugins import load_general_plugins
load_general_plugins()
time.sleep(float(os.environ.get("LINGER", "0")))
' "$@"
""")
    (bindir / "vllm").chmod(0o755)
    return bindir


def _serve(tmp_path, bindir, *extra, env=None, **popen):
    model = model_folder(tmp_path / "model")
    cmd = [str(bindir / "python"), str(REPO / "cli.py"), "serve", str(model), "--engine", "flagscale",
           "--runtime-dir", str(tmp_path / "rt"), "--exclude", "mul", "--port", "8124", *extra]
    # the symlinked interpreter is the base one in a virtual environment: its packages by PYTHONPATH
    path = os.pathsep.join([*site.getsitepackages(), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full = {**os.environ, **CPU, "RECORD": str(tmp_path / "record.json"), "TUNER_API_KEY": "k-9",
            "PYTHONPATH": path, **(env or {})}
    return subprocess.Popen(cmd, cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def test_serve_starts_flagscale_whose_vllm_runs_tuners_plugin(tmp_path):
    proc = _serve(tmp_path, _bin(tmp_path), "--", "--max-model-len", "4096")
    out, _ = proc.communicate(timeout=400)
    rt = (tmp_path / "rt").resolve()
    assert proc.returncode == 1, out[-4000:]  # the recorder exits: a server that ends by itself failed
    assert "the FlagScale serve job ended by itself" in out
    # the job's log, followed by tuner: FlagScale's vLLM loaded tuner's plugin with the runtime folder
    assert f"tuner plugin: vLLM front-end process; {rt} applies in the engine processes" in out, out[-4000:]
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["argv"] == ["serve", str(tmp_path / "model"), "--host", "127.0.0.1", "--port", "8124",
                           "--max-model-len", "4096", "--max-num-batched-tokens", "8192"]
    env = rec["env"]
    assert env["TUNER_RUNTIME_DIR"] == str(rt) and env["USE_FLAGGEMS"] == "false"
    assert env["VLLM_API_KEY"] == "k-9" and env["FLAGGEMS_DB_URL"] == f"sqlite:///{rt / 'flaggems_cache.db'}"
    assert read_state(rt)["exclude_ops"] == ["mul"]


def test_a_vllm_without_its_command_is_run_through_a_shim(tmp_path):
    """As on the H200 host, where vLLM was unpacked on PYTHONPATH with no `vllm` script: FlagScale's
    `subprocess.Popen(["vllm", "serve", ...])` died with FileNotFoundError (results/serve/
    flagscale_h200). tuner now writes a `vllm` for this interpreter, from vLLM's console-script entry
    point, first on PATH, and FlagScale's `vllm serve` reaches vLLM's own CLI."""
    # no other `vllm` on PATH: FlagScale finds the shim or nothing (the CI's pip puts one in ~/.pyenv)
    proc = _serve(tmp_path, _bin(tmp_path, with_vllm=False), "--", "--max-model-len", "4096",
                  env={"PATH": "/usr/bin:/bin"})
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 1, out[-4000:]  # no model to serve here: the job ends by itself
    shim = (tmp_path / "rt").resolve() / "flagscale" / "bin" / "vllm"
    assert os.access(shim, os.X_OK) and "vllm.entrypoints.cli.main" in shim.read_text()
    assert "No such file or directory: 'vllm'" not in out, out[-4000:]
    # vLLM's CLI ran: on a CPU host without its server packages it stops at an import, in a
    # traceback through its main module; with them, it loads the plugins (tuner's line) first
    assert "vllm/entrypoints/cli/main.py" in out or "tuner plugin: vLLM front-end process" in out, out[-4000:]


def test_ctrl_c_stops_the_job_and_only_it(tmp_path):
    proc = _serve(tmp_path, _bin(tmp_path), env={"LINGER": "300"})
    record = tmp_path / "record.json"
    deadline = time.monotonic() + 300
    while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert record.exists(), proc.communicate(timeout=60)[0][-4000:]
    time.sleep(8)  # the recorder is in vLLM's plugin loader or its sleep
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-4000:]
    assert time.monotonic() - start < 30
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(record) not in ps and str(tmp_path / "rt") not in ps  # nothing of the job is left running


def _cli_fails(tmp_path, *args, code=None):
    prelude = code or ""
    r = subprocess.run([sys.executable, "-c", f"{prelude}\nimport sys; sys.argv = ['tuner', *sys.argv[1:]]\n"
                        "from cli import app; app()", "serve", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, **CPU}, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    model = model_folder(tmp_path / "model")
    rt = tmp_path / "rt"
    base = ["--engine", "flagscale", "--runtime-dir", str(rt), "--exclude", "mul"]
    assert "does not exist" in _cli_fails(tmp_path, str(tmp_path / "missing"), *base)
    assert "long form" in _cli_fails(tmp_path, str(model), *base, "--", "-tp", "1")
    # FlagScale writes a list from its config as one "['a', 'b']" argument
    assert "one value per option" in _cli_fails(tmp_path, str(model), *base, "--", "--served-model-name", "a", "b")
    assert "vLLM refuses the engine arguments" in _cli_fails(tmp_path, str(model), *base, "--", "--no-such-knob", "1")
    with pytest.raises(UserError, match="shell quoting"):
        prepare(ServeRequest(model=str(model), engine="flagscale", exclude=[], runtime_dir=str(tmp_path / "a b")))
    assert not rt.exists() and not (tmp_path / "a b").exists()


def test_missing_flagscale_says_how_to_install_it(tmp_path):
    """flag_scale hidden from every import finder, as on a host without it."""
    hide = hidden_modules("flag_scale")
    model = model_folder(tmp_path / "model")
    line = _cli_fails(tmp_path, str(model), "--engine", "flagscale", "--runtime-dir", str(tmp_path / "rt"), code=hide)
    assert "missing flag_scale" in line and "pip install --no-deps flag-scale==0.8.0" in line
    assert "replaces your torch" in line and not (tmp_path / "rt").exists()
