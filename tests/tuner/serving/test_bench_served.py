"""`tuner bench` through served engines (`--engine flagscale`, `--engine vllm,flagscale`, `--served`)
without a GPU: the server commands and environments per engine and mode (real flag-scale 0.8.0 writes
and checks its config), the refusals, and the holder / HTTP client / statistics path.

The client tests start a small OpenAI-completions server of their own (standard library, in a child
process): it checks tuner's client, holder, stop sequence, log reading and statistics, NOT vLLM or
FlagScale serving (vLLM cannot serve on a CPU). A served bench has no other way to be exercised here."""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import hidden_modules, model_folder
from tuner.errors import UserError
from tuner.serving import bench as flow
from tuner.serving import bench_served
from tuner.serving.bench_client import Client, ServerError, logprob_row
from tuner.serving.bench_report import agreement_lines

REPO = Path(__file__).resolve().parents[3]
CPU = {"VLLM_TARGET_DEVICE": "cpu"}  # vLLM builds its argument parser for the CPU target without a GPU

# An OpenAI completions server: /v1/models; streamed completions (first token after FIRST_S, then one
# token every STEP_S, then a usage chunk and [DONE]); prompt_logprobs (top-1 = the actual token + 1 at
# -0.5, the actual token at -2.0); HTTP 400 for an empty prompt; the router's exit line on SIGTERM.
FAKE_SERVER = textwrap.dedent('''
    import json, os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    FIRST_S, STEP_S = float(os.environ["FIRST_S"]), float(os.environ["STEP_S"])
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a):
            pass
        def _json(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def do_GET(self):
            self._json(200, {"data": [{"id": "/m"}]})
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["prompt"]
            if not prompt:
                return self._json(400, {"error": "prompt is empty"})
            if not body.get("stream"):
                lps = [None] + [{str(t + 1): {"logprob": -0.5}, str(t): {"logprob": -2.0}} for t in prompt[1:]]
                return self._json(200, {"choices": [{"text": "x", "prompt_logprobs": lps}]})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            n = body["max_tokens"]
            time.sleep(FIRST_S)
            for i in range(n):
                if i:
                    time.sleep(STEP_S)
                self.wfile.write(b"data: " + json.dumps({"choices": [{"text": "a"}]}).encode() + b"\\n\\n")
                self.wfile.flush()
            if os.environ.get("NO_USAGE") != "1":
                usage = {"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": len(prompt)}}
                self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\\n\\n")
            self.wfile.write(b"data: [DONE]\\n\\n")
            self.wfile.flush()
    srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
    def bye(*_):
        print("Autotuning kernel _fake with config BLOCK_M: 64", flush=True)
        print("tuner router: GEMM calls dispatched since start: FlagGems 3, split-K 2, native 7", flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, bye)
    print("fake server up", flush=True)
    srv.serve_forever()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(tmp_path) -> Path:
    return model_folder(tmp_path / "model")


def _req(tmp_path, **kw) -> flow.BenchRequest:
    base = dict(model=str(_model(tmp_path)), out_dir=str(tmp_path / "out"), exclude=["mul"],
                db_url=f"sqlite:///{tmp_path / 't.db'}", concurrency=(1, 4), prompt_tokens=16, output_tokens=8,
                warm_repeats=1, port=_free_port(), timeout_s=60.0)
    return flow.BenchRequest(**{**base, **kw})


def test_server_commands_per_engine_and_mode(tmp_path, monkeypatch):
    """FlagScale's config (its own schema, written by tuner serve's code) carries the bench's engine
    arguments and, outside native, tuner's runtime; vLLM's command gets the same arguments."""
    pytest.importorskip("flag_scale", reason="flag-scale not installed (pip install --no-deps -r .ci/nodeps.txt)")
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    monkeypatch.setenv("TUNER_RUNTIME_DIR", "/left/over")  # the caller's: never reaches a bench engine
    req = _req(tmp_path, engine="vllm,flagscale", concurrency=(1, 64), max_tokens=2048)
    expect_args = ["--dtype", "bfloat16", "--seed", "0", "--max-model-len", "4096", "--max-num-seqs", "64",
                   "--gpu-memory-utilization", "0.85", "--no-enable-prefix-caching",
                   "--max-num-batched-tokens", "2048"]
    cmd, env = bench_served.launch_spec(req, "vllm", "native", tmp_path / "vn")
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[3:] == ["--model", req.model, "--host", "127.0.0.1", "--port", str(req.port), *expect_args]
    assert "TUNER_RUNTIME_DIR" not in env and env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    cmd_u, env_u = bench_served.launch_spec(req, "vllm", "untuned", tmp_path / "vu")
    assert cmd_u == cmd and env_u["TUNER_RUNTIME_DIR"] == str((tmp_path / "vu" / "runtime").resolve())

    for mode in ("native", "untuned"):
        folder = tmp_path / f"fs-{mode}"
        cmd, env = bench_served.launch_spec(req, "flagscale", mode, folder)
        conf = Path(cmd[-1])
        assert cmd[1:5] == ["-m", "flag_scale.flagscale.cli", "serve", "tuner"]
        assert conf == (folder / "runtime" / "flagscale" / "conf" / "serve.yaml").resolve()
        main = yaml.safe_load(conf.read_text())
        serve = yaml.safe_load((conf.parent / "serve" / "tuner.yaml").read_text())
        envs = main["experiment"]["envs"]
        assert envs["USE_FLAGGEMS"] == "false" and main["experiment"]["runner"]["deploy"]["use_fs_serve"] is False
        args = serve[0]["engine_args"]
        assert (args["model"], args["host"], args["port"]) == (req.model, "127.0.0.1", req.port)
        # the same options as vLLM's command, in FlagScale's engine_args form (FlagScale passes them
        # back token for token: tests/tuner/serving/test_flagscale.py)
        assert {k: v for k, v in args.items() if k not in ("model", "host", "port")} == {
            "dtype": "bfloat16", "seed": "0", "max_model_len": "4096", "max_num_seqs": "64",
            "gpu_memory_utilization": "0.85", "no_enable_prefix_caching": True, "max_num_batched_tokens": "2048"}
        if mode == "native":
            assert "TUNER_RUNTIME_DIR" not in envs and "TUNER_RUNTIME_DIR" not in env
        else:
            rt = str((folder / "runtime").resolve())
            assert envs["TUNER_RUNTIME_DIR"] == rt == env["TUNER_RUNTIME_DIR"]


def test_bad_served_requests_are_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use"):
            flow.validate(_req(tmp_path, engine="vllm", served=True, port=port))
        # a port taken between modes: that mode fails, nothing is started
        out = flow.run_mode(_req(tmp_path, engine="vllm", served=True, port=port), "native", "vllm")
        assert "is in use" in out["error"] and out["label"] == "native" and out["api"] == "http"
    assert not (tmp_path / "out" / "native" / "engine.log").exists()
    with pytest.raises(UserError, match="--profile needs the in-process engine"):
        flow.validate(_req(tmp_path, engine="flagscale", profile=True))


def test_bench_without_flagscale_says_how_to_install_it(tmp_path):
    """flag_scale hidden from every import finder, as on a host without it: exit 2, nothing written."""
    out = tmp_path / "out"
    code = f"{hidden_modules('flag_scale')}\nimport sys; sys.argv = ['tuner', *sys.argv[1:]]\nfrom cli import app; app()"
    r = subprocess.run([sys.executable, "-c", code, "bench", str(_model(tmp_path)), "--engine", "vllm,flagscale",
                        "--out-dir", str(out), "--port", str(_free_port())],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **CPU}, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "missing flag_scale" in r.stderr and "pip install --no-deps flag-scale==0.8.0" in r.stderr
    assert not out.exists()


def _fake(req, engines_speed, monkeypatch):
    """Each engine's server is FAKE_SERVER with its own token pace (not vLLM: see the module docstring)."""
    def spec(r, engine, mode, folder):
        first, step = engines_speed[engine]
        return ([sys.executable, "-c", FAKE_SERVER, str(r.port)],
                {**os.environ, "FIRST_S": str(first), "STEP_S": str(step)})
    monkeypatch.setattr(bench_served, "launch_spec", spec)


def test_served_runs_through_holder_client_and_statistics(tmp_path, monkeypatch):
    req = _req(tmp_path, engine="vllm,flagscale", modes=("tuned",))
    _fake(req, {"vllm": (0.05, 0.01), "flagscale": (0.05, 0.03)}, monkeypatch)
    results = [flow.run_mode(req, "tuned", e) for e in req.engines]
    for r in results:
        assert "error" not in r, r.get("error")
        assert r["label"] in ("vllm/tuned", "flagscale/tuned") and r["api"] == "http"
        # the router's exit line and the autotune line reached the log: the holder sent SIGTERM on
        assert r["events"]["router_calls"] == {"flaggems": 3, "splitk": 2, "native": 7}
        assert r["events"]["autotunes"] == 1
        assert [(b["concurrency"], b["phase"]) for b in r["batches"]] == [(1, "cold"), (4, "cold"), (1, "warm"),
                                                                          (4, "warm")]
        assert all(b["output_tokens"] == b["concurrency"] * 8 for b in r["batches"])
        warm4 = r["batches"][-1]
        assert len(warm4["ttft_ms"]) == 4 and len(warm4["tpot_ms"]) == 4
        assert min(warm4["ttft_ms"]) >= 50.0 and r["start_s"] > 0
        # the fake's top-1 is the actual token + 1, as the API's string keys say
        assert r["prompt_logprobs"][0]["actual_logprob"] == [-2.0] * 15
    vllm_r, fs_r = results
    assert min(fs_r["batches"][-1]["tpot_ms"]) >= 30.0 > max(vllm_r["batches"][-1]["tpot_ms"]) >= 10.0
    rep = flow.summarise(results, "vllm")
    fs64 = next(r for r in rep["runs"] if r["label"] == "flagscale/tuned" and r["concurrency"] == 4)
    assert fs64["engine"] == "flagscale" and fs64["reference_engine"] == "vllm"
    assert 0.2 < fs64["vs_engine"] < 0.8  # 50 + 7 x 30 ms against 50 + 7 x 10 ms per request
    assert rep["engine_agreement"]["flagscale/tuned"]["top1_agreement"] == 1.0
    # each served engine left its result.json: `tuner bench-report` gets the same agreement back
    from tuner.serving.bench_recover import recover

    flow.write_modes(Path(req.out_dir), [results])
    assert recover(req.out_dir)["engine_agreement"] == rep["engine_agreement"]
    lines = agreement_lines(rep)
    assert any(line.startswith("flagscale/tuned vs vllm/tuned, 4 concurrent:") and line.endswith("(within 3%: NO)")
               for line in lines), lines
    # nothing of the servers is left running
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "fake server" not in ps


def test_a_server_that_never_answers_or_dies_is_reported_with_its_log(tmp_path):
    never = [sys.executable, "-c", "import time; print('loading weights', flush=True); time.sleep(300)"]
    server = bench_served.Server("vllm", never, dict(os.environ), tmp_path / "never.log")
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"did not answer within 2 s(.|\n)*loading weights"):
        server.wait_ready(Client(f"http://127.0.0.1:{_free_port()}"), 2)
    assert server.stop(grace_s=5) is not None and time.monotonic() - t0 < 60
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "loading weights" not in ps

    dies = [sys.executable, "-c", "print('RuntimeError: no CUDA device', flush=True); raise SystemExit(3)"]
    server = bench_served.Server("vllm", dies, dict(os.environ), tmp_path / "dies.log")
    with pytest.raises(UserError, match=r"ended \(exit 3\) before answering(.|\n)*no CUDA device"):
        server.wait_ready(Client(f"http://127.0.0.1:{_free_port()}"), 120)
    server.stop(grace_s=5)


def test_client_refuses_broken_answers(tmp_path):
    port = _free_port()
    env = {**os.environ, "FIRST_S": "0", "STEP_S": "0", "NO_USAGE": "1"}
    server = bench_served.Server("vllm", [sys.executable, "-c", FAKE_SERVER, str(port)], env, tmp_path / "s.log")
    try:
        c = Client(f"http://127.0.0.1:{port}", timeout_s=30)
        deadline = time.monotonic() + 60
        while not c.ready():
            assert time.monotonic() < deadline, bench_served.log_tail(tmp_path / "s.log")
            time.sleep(0.2)
        assert c.model == "/m"
        with pytest.raises(ServerError, match="without its usage chunk"):
            c.stream([5, 6, 7], 4)
        with pytest.raises(ServerError, match="HTTP 400: .*prompt is empty"):
            c.stream([], 4)
    finally:
        server.stop(grace_s=5)
    with pytest.raises(ServerError, match="no prompt_logprobs"):
        logprob_row([1, 2], None)
    row = logprob_row([4, 9, 3], [None, {"10": {"logprob": -0.1}, "9": {"logprob": -1.5}}, {"3": {"logprob": -0.2}}])
    assert row == {"top1": [10, 3], "actual_logprob": [-1.5, -0.2]}


def _two_engine_report():
    from tests.tuner.serving.test_bench import _mode

    results = []
    for mode, tps in (("native", 200.0), ("untuned", 190.0), ("tuned", 210.0)):
        for engine, f in (("vllm", 1.0), ("flagscale", 0.98)):
            results.append({**_mode(mode, tps * f, tps * 27 * f, 60.0), "engine_name": engine,
                            "label": f"{engine}/{mode}", "api": "http"})
    return flow.summarise(results, "vllm")


def test_two_engine_report_table_chart_and_rows(tmp_path):
    import io

    from rich.console import Console

    from tests.tuner.serving.test_bench import store_and_read
    from tuner.serving.bench_report import bench_chart, bench_table

    rep = _two_engine_report()
    fs = {(r["mode"], r["concurrency"]): r for r in rep["runs"] if r["engine"] == "flagscale"}
    # x native is against the same engine's native; vs_engine against vLLM in the same mode
    assert fs["tuned", 1]["vs_native"] == pytest.approx(210 / 200)
    assert fs["tuned", 1]["vs_engine"] == pytest.approx(0.98)
    assert all("vs_engine" not in r for r in rep["runs"] if r["engine"] == "vllm")
    assert set(rep["agreement"]) == {"vllm/untuned", "vllm/tuned", "flagscale/untuned", "flagscale/tuned"}
    lines = agreement_lines(rep)
    assert "flagscale/tuned vs vllm/tuned, 64 concurrent: 0.980x output tokens/s (within 3%: yes)" in lines
    assert any(line.startswith("flagscale/untuned vs flagscale/native, teacher-forced") for line in lines)
    buf = io.StringIO()
    Console(file=buf, width=80).print(bench_table(rep))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert "fs/untuned" in text and "fs = flagscale" in text
    if pytest.importorskip("matplotlib"):
        assert bench_chart(rep, tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    rows = store_and_read(tmp_path, rep["runs"], engine="vllm,flagscale")
    assert {(r["engine"], r["mode"]) for r in rows} == {(e, m) for e in ("vllm", "flagscale")
                                                        for m in ("native", "untuned", "tuned")}
    assert next(r for r in rows if r["label"] == "flagscale/tuned" and r["concurrency"] == 1)["vs_engine"] == \
        pytest.approx(0.98)
