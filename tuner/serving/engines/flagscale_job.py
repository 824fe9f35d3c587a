"""Hold a FlagScale serve job in the foreground. `flagscale serve` writes a run script, starts it with
`nohup ... &` and exits at once; the engine then runs orphaned, its output in
`<exp_dir>/serve_logs/host_0_localhost.output`, and FlagScale's own stop kills by name (`pkill -f
'vllm serve'`, `pkill -f multiprocessing`: anyone's). tuner instead starts FlagScale in a session of
its own, adopts the orphans (Linux child subreaper), prints the job's log as it grows, sends a
Ctrl-C or SIGTERM on to that session's process group only, and returns when every process of the job
has ended."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _follow(logs: Path, done: threading.Event, out=None) -> None:
    """Copy every host_*.output under `logs` to `out` as it grows, until `done` (then once more)."""
    out = out or sys.stdout
    offsets: dict[Path, int] = {}
    while True:
        last = done.is_set()
        for path in sorted(logs.glob("host_*.output")):
            with open(path, "rb") as f:
                f.seek(offsets.get(path, 0))
                chunk = f.read()
            if chunk:
                offsets[path] = offsets.get(path, 0) + len(chunk)
                out.write(chunk.decode(errors="replace"))
                out.flush()
        if last:
            return
        done.wait(0.5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run(command: list[str], env: dict[str, str], outputs: Path) -> int:
    """FlagScale's exit code when it failed; else 0 when tuner stopped the job on a signal, 1 when
    the job ended on its own (a server that stops by itself has failed: its log says why)."""
    adopted = _adopt_orphans()
    proc = subprocess.Popen(command, env={**os.environ, **env}, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum, _frame):
        # bash starts `nohup ... &` with SIGINT ignored, and so every process of the job: a Ctrl-C is
        # sent on as SIGTERM (vLLM shuts down on it), a second one as SIGKILL
        forwarded.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM if len(forwarded) == 1 else signal.SIGKILL)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    done = threading.Event()
    follower = threading.Thread(target=_follow, args=(outputs / "serve_logs", done), daemon=True)
    follower.start()
    cli_rc = None
    try:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == proc.pid:
                cli_rc = os.waitstatus_to_exitcode(status)
                proc.returncode = cli_rc
        while not adopted and _group_alive(proc.pid):  # orphans went to init: watch their group
            time.sleep(1)
    finally:
        done.set()
        follower.join()
        for s, h in old.items():
            signal.signal(s, h)
    if cli_rc:
        return cli_rc
    if forwarded:
        return 0
    print(f"tuner: the FlagScale serve job ended by itself; its scripts and log: {outputs / 'serve_logs'}",
          file=sys.stderr)
    return 1
