"""Start `tuner serve`, wait for the first answered /v1/chat/completions request, send a few
more, stop the server, and count FlagGems' LibTuner benchmarking (TRITON_PRINT_AUTOTUNING=1
prints one line per autotuned key). Prints one JSON line.

usage: python -m tuner.benchmarks.serve_probe LOG PORT WAIT_S -- <tuner serve arguments>
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

AUTOTUNE_LINE = re.compile(r"Triton autotuning for function (\w+) finished after ([\d.]+)s; key info: (\(.*?\)),")


def ask(port: int, model: str, timeout: float = 120.0) -> dict:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello, who are you?"}],
                       "max_tokens": 16, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def main() -> None:
    log_path, port, wait_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    serve_args = sys.argv[sys.argv.index("--") + 1:]
    model = serve_args[0]
    env = {**os.environ, "TRITON_PRINT_AUTOTUNING": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "cli.py", "serve", *serve_args, "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        first, answers, error = None, [], None
        while time.monotonic() - t0 < wait_s and proc.poll() is None:
            try:
                answers.append(ask(port, model))
                first = time.monotonic() - t0
                break
            except Exception as e:  # not up yet
                error = f"{type(e).__name__}: {e}"
                time.sleep(1.0)
        if first is not None:
            for _ in range(2):
                t = time.monotonic()
                answers.append(ask(port, model))
                answers[-1]["_latency_s"] = time.monotonic() - t
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    text = open(log_path, errors="replace").read()
    tuned = collections.Counter(m.group(1) for m in AUTOTUNE_LINE.finditer(text))
    keys = [(m.group(1), m.group(3), float(m.group(2))) for m in AUTOTUNE_LINE.finditer(text)]
    plugin = [ln for ln in text.splitlines() if "tuner plugin:" in ln]
    print(json.dumps({
        "args": serve_args, "first_answer_s": first, "answered": len(answers),
        "later_latencies_s": [a.get("_latency_s") for a in answers[1:]],
        "reply": (answers[0]["choices"][0]["message"] if answers else None),
        "libtuner_autotune_calls": sum(tuned.values()), "by_function": dict(tuned),
        "autotune_seconds": round(sum(k[2] for k in keys), 2), "autotuned_keys": keys[:40],
        "plugin_line": plugin[:2], "exit": proc.returncode, "last_error": None if first else error,
    }), flush=True)


if __name__ == "__main__":
    main()
