"""One mode of `tuner bench` through a served engine: FlagScale (always a server: `flagscale serve`
starts `vllm serve` in a background job) and vLLM with `--served`. The engine is started exactly as
`tuner serve MODEL --engine E [--use-tuned] --port P -- <bench's engine args>` starts it (the same
`prepare` and the same `launch`, in a holder process of its own: `python -m
tuner.serving.bench_served`), with the engine arguments that give the in-process bench's settings
(bfloat16, seed 0, 4096-token context, max-num-seqs, max-num-batched-tokens, 0.85 of GPU memory, no
prefix caching), identical for every engine. Requests go over HTTP (tuner.serving.bench_client); the
result has bench_engine's format, so the statistics, the table and the database rows are the same."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import UserError
from tuner.serving import engines

if TYPE_CHECKING:
    from tuner.serving.bench import BenchRequest

HOST = "127.0.0.1"
TUNER_VARS = ("TUNER_RUNTIME_DIR", "FLAGGEMS_DB_URL", "VLLM_TUNED_CONFIG_FOLDER")
STOP_GRACE_S = 60.0  # vLLM's shutdown after SIGTERM (the router line is logged at the engine core's exit)


def server_args(req: "BenchRequest") -> list[str]:
    """bench_engine.build_llm's settings as `vllm serve` options (long form: FlagScale passes only those)."""
    max_seqs = max(req.concurrency)
    return ["--dtype", "bfloat16", "--seed", "0", "--max-model-len", "4096", "--max-num-seqs", str(max_seqs),
            "--gpu-memory-utilization", "0.85", "--no-enable-prefix-caching"]


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds (uvicorn)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def launch_spec(req: "BenchRequest", engine: str, mode: str, folder: Path) -> tuple[list[str], dict[str, str]]:
    """(command, full environment) of the server for this engine and mode. untuned / tuned: what
    `tuner serve` / `tuner serve --use-tuned` prepares. native: the same engine command with nothing of
    tuner's (no runtime folder: the plugin does nothing; FlagScale keeps USE_FLAGGEMS=false)."""
    from tuner.serving.flow import ServeRequest, prepare

    base = {k: v for k, v in os.environ.items() if k not in TUNER_VARS}
    base.update(req.extra_env)
    base.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    runtime = folder / "runtime"
    if mode != "native":
        p = prepare(ServeRequest(model=req.model, engine=engine, use_tuned=mode == "tuned",
                                 engine_args=server_args(req), db_url=req.db_url,
                                 allow_foreign=req.allow_foreign, max_tokens=req.max_tokens,
                                 runtime_dir=str(runtime), port=req.port, host=HOST, exclude=req.exclude,
                                 dry_run=True, route_within=req.route_within if mode == "tuned" else 1.0))
        return p.command, {**base, **p.env}
    module = engines.engine(engine)
    _, args = engines.batch_tokens(module, req.max_tokens, server_args(req))
    command = module.command(req.model, req.port, args, host=HOST)
    env = module.env(runtime)
    if hasattr(module, "config_writer"):
        command = module.write(module.config_writer(runtime, req.model, req.port, args, HOST), env)
    return command, {**base, **env}


def log_tail(path: Path, n: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=n)).rstrip()
    except OSError:
        return "(no log)"


class Server:
    """The holder process (`tuner serve`'s launch, in a session of its own), its log, its stop."""

    def __init__(self, engine: str, command: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tuner.serving.bench_served", engine,
                                      json.dumps(command)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, client, timeout_s: float) -> float:
        """Seconds until the server answers; a UserError naming the log's tail when it ends first or
        does not answer within timeout_s."""
        t0 = time.perf_counter()
        while not client.ready():
            if self.proc.poll() is not None:
                raise UserError(f"the server ended (exit {self.proc.returncode}) before answering; "
                                f"the end of {self.log_path}:\n{log_tail(self.log_path)}")
            if time.perf_counter() - t0 > timeout_s:
                raise UserError(f"the server did not answer within {timeout_s:.0f} s (--timeout); "
                                f"the end of {self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(1.0)
        return time.perf_counter() - t0

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM to the holder, which sends it on to the engine as `tuner serve` does on Ctrl-C; a
        second one after grace_s (FlagScale's job then gets SIGKILL); at last SIGKILL to what is left
        of the holder's process group."""
        for wait in (grace_s, 10.0):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        rc = self.proc.wait()
        self.log.close()
        return rc


def run_served(req: "BenchRequest", engine: str, mode: str, folder: Path) -> dict[str, Any]:
    """Start the server, run bench_engine's workload over HTTP, stop it; bench_engine's result format
    (an "error" key instead when the server failed)."""
    from tuner.serving.bench_client import Client, ServerError
    from tuner.serving.bench_engine import SMALL_M_PROMPTS, Workload, token_prompts

    w = Workload(prompt_tokens=req.prompt_tokens, output_tokens=req.output_tokens,
                 concurrencies=tuple(req.concurrency), warm_repeats=req.warm_repeats)
    if not port_free(req.port):
        return {"mode": mode, "error": f"port {req.port} on {HOST} is in use (a server of an earlier mode "
                                       "still running?); nothing was started"}
    command, env = launch_spec(req, engine, mode, folder)
    client = Client(f"http://{HOST}:{req.port}", api_key=env.get("VLLM_API_KEY"), timeout_s=req.timeout_s)
    server = Server(engine, command, env, folder / "engine.log")
    try:
        start_s = server.wait_ready(client, req.timeout_s)
        batches = [client.batch(token_prompts(c, w.prompt_tokens, w.vocab, w.seed + c), w.output_tokens, "cold")
                   for c in w.concurrencies]
        for rep in range(w.warm_repeats):
            for c in w.concurrencies:
                prompts = token_prompts(c, w.prompt_tokens, w.vocab, w.seed + 1000 * (rep + 1) + c)
                batches.append(client.batch(prompts, w.output_tokens, "warm"))
        agreement = client.prompt_logprobs(token_prompts(w.logprob_prompts, w.prompt_tokens, w.vocab, 7))
        small = client.prompt_logprobs([token_prompts(1, n, w.vocab, 70 + n)[0] for n in SMALL_M_PROMPTS],
                                       one_per_step=True)
    except UserError as e:
        return {"mode": mode, "error": str(e)}
    except (ServerError, OSError) as e:
        return {"mode": mode, "error": f"{type(e).__name__}: {e}; the end of {server.log_path}:\n"
                                       f"{log_tail(server.log_path)}"}
    finally:
        server.stop()
    result = {"mode": mode, "start_s": start_s, "workload": asdict(w),
              "engine": {"served_by": engine, "api": "openai-http", "command": command},
              "batches": [{**asdict(b), "output_tok_s": b.output_tok_s} for b in batches],
              "prompt_logprobs": agreement, "small_m_logprobs": small, "profile_concurrency": None}
    # beside its log, as the in-process engine writes its own: `tuner bench-report` reads it back
    (folder / "result.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":  # the holder: `tuner serve`'s launch of a prepared command
    from tuner.serving.flow import Prepared, launch

    sys.exit(launch(Prepared(command=json.loads(sys.argv[2]), env={}, runtime_dir=Path("."), records=0,
                             exclude=[], engine=sys.argv[1])))
