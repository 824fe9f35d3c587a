"""`tuner tune --workers N [--gpus 0,1,...]`: N measurement processes (per GPU) on the same studies.

Each child is a whole `tune` (tuner.tuning.child) with the same request: the claims in the
database (db.claims) keep them from measuring a config twice, and the study's claims are its
budget, so `--trials` stays the study's total. Children run in their own session so that a
Ctrl-C reaches the parent only, which passes exactly one SIGINT to each child (a second one
would cut a child's clean-up short); each child then queues its configs in flight again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Callable

from tuner.errors import UserError
from tuner.tuning import flow

INTERRUPT_WAIT_S = 120.0  # a child's clean-up after SIGINT (re-queueing, closing its worker)
PROGRESS_ENV = "TUNER_CHILD_PROGRESS"  # set: the child prints a line per key as it ends (stdout)
PROGRESS_LINE = re.compile(r"^\[\d+/\d+\] ")  # tuner.report's key line (the last line is the results' JSON)


@dataclass
class Child:
    index: int
    gpu: str | None
    proc: subprocess.Popen | None = None
    out: IO | None = None  # its stdout and stderr, in temporary files
    err: IO | None = None
    code: int | None = None
    results: list[flow.KeyResult] = field(default_factory=list)
    error: str = ""
    read_to: int = 0  # how far the parent has read its stdout for progress lines
    partial: bytes = b""  # a line begun in the last read (bytes: a read may end inside "µ")

    @property
    def name(self) -> str:
        return f"worker {self.index}" + (f" (GPU {self.gpu})" if self.gpu is not None else "")

    def failure_line(self) -> str:
        """One line for a failed child: its exit code and the last line it wrote to stderr."""
        last = next((ln.strip() for ln in reversed(self.error.splitlines()) if ln.strip()), "no message")
        return f"{self.name} failed (exit {self.code}): {last}"[:200]


@dataclass
class ParallelOutcome:
    results: list[flow.KeyResult]  # per key: the children's results merged
    children: list[Child]

    @property
    def failed(self) -> list[Child]:
        return [c for c in self.children if c.code != 0]


def parse_gpus(text: str | None) -> list[str] | None:
    if text is None:
        return None
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--gpus must be comma-separated GPU indices, e.g. 0,1; got {text!r}") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise UserError(f"--gpus must name each GPU once by its index, e.g. 0,1; got {text!r}")
    return [str(i) for i in ids]


def plan(req: flow.TuneRequest, workers: int, gpus: str | None) -> list[Child]:
    """The children to start, after every check of the request (nothing is started or written
    when one fails)."""
    if workers < 1:
        raise UserError("--workers must be 1 or more (measurement processes per GPU, or in all on CPU)")
    ids = parse_gpus(gpus)
    _, _, device, _ = flow.validate(req)
    if ids is not None:
        if device != "cuda":
            raise UserError("--gpus needs --device cuda: on CPU use --workers alone")
        import torch

        count = torch.cuda.device_count()
        missing = [i for i in ids if int(i) >= count]
        if missing:
            raise UserError(f"--gpus names GPU {missing[0]}, but this machine has {count} "
                            f"(indices 0 to {count - 1})")
    per_gpu = ids or [None]  # None: no GPU named, the device as the request says
    return [Child(n, gpu) for n, gpu in enumerate(g for g in per_gpu for _ in range(workers))]


def _child_request(req: flow.TuneRequest, index: int, n: int) -> dict:
    fields = dataclasses.asdict(req)
    if req.seed is not None:
        fields["seed"] = req.seed + index  # one seed for all would propose the same configs in step
    if req.compile_workers is None and n > 1:
        # the default (up to 8 compile helpers per process on a GPU) shared among the children
        fields["compile_workers"] = max(1, min(8, max(1, (os.cpu_count() or 2) - 2)) // n)
    return fields


def run_parallel(req: flow.TuneRequest, workers: int, gpus: str | None,
                 on_child: Callable[[Child], None] | None = None,
                 on_line: Callable[[Child, str], None] | None = None) -> ParallelOutcome:
    """Start the children, wait for all, merge their results per key. on_child: called as each
    child ends; on_line: with each progress line a child prints (a key it finished)."""
    children = plan(req, workers, gpus)
    for child in children:
        env = dict(os.environ)
        if on_line is not None:
            env[PROGRESS_ENV] = "1"
        if child.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = env["TUNER_WORKER_GPU"] = child.gpu
        # output into files, not pipes: a child filling a pipe's 64 KiB while the parent waits on
        # another would stall
        child.out, child.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        child.proc = subprocess.Popen([sys.executable, "-m", "tuner.tuning.child"], env=env, stdin=subprocess.PIPE,
                                      stdout=child.out, stderr=child.err, text=True, start_new_session=True)
        child.proc.stdin.write(json.dumps(_child_request(req, child.index, len(children))) + "\n")
        child.proc.stdin.close()
    try:
        _wait(children, on_child, on_line)
    except KeyboardInterrupt:
        _interrupt(children)
        raise
    return ParallelOutcome(merge([r for c in children for r in c.results]), children)


def _progress(child: Child, on_line) -> None:
    """The progress lines the child printed since the last look (pread: the child's file offset,
    which its writes use, stays where it is)."""
    while True:
        chunk = os.pread(child.out.fileno(), 1 << 16, child.read_to)
        if not chunk:
            break
        child.read_to += len(chunk)
        *lines, child.partial = (child.partial + chunk).split(b"\n")
        for line in (raw.decode("utf-8", "replace") for raw in lines):
            if PROGRESS_LINE.match(line):
                on_line(child, line)


def _wait(children: list[Child], on_child, on_line=None) -> None:
    """Until every child has ended; on_child as each one ends, in the order they end."""
    running = list(children)
    while running:
        if on_line is not None:
            for child in running:
                _progress(child, on_line)
        for child in [c for c in running if c.proc.poll() is not None]:
            if on_line is not None:
                _progress(child, on_line)
            running.remove(child)
            child.code = child.proc.returncode
            child.out.seek(0)
            child.err.seek(0)
            out, child.error = child.out.read(), child.err.read()
            if child.code == 0 and out.strip():
                child.results = [flow.result_from_dict(d) for d in json.loads(out.strip().splitlines()[-1])]
            if on_child:
                on_child(child)
        time.sleep(0.2)


def _interrupt(children: list[Child]) -> None:
    """One SIGINT to each child still running; those not done after INTERRUPT_WAIT_S are killed."""
    alive = [c for c in children if c.proc.poll() is None]
    for c in alive:
        c.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + INTERRUPT_WAIT_S
    for c in alive:
        try:
            c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


def merge(results: list[flow.KeyResult]) -> list[flow.KeyResult]:
    """Per key, in first-seen order: the result with the fastest confirmed best, its counts the
    sum of all children's (each child measured different configs of the same study)."""
    by_key: dict[tuple, list[flow.KeyResult]] = {}
    for r in results:
        by_key.setdefault(r.key, []).append(r)
    merged = []
    for key, rs in by_key.items():
        timed = [r for r in rs if r.outcome.best_us is not None]
        best = min(timed, key=lambda r: r.outcome.best_us) if timed else rs[0]
        counts: dict[str, int] = {}
        for r in rs:
            for kind, n in r.outcome.counts.items():
                counts[kind] = counts.get(kind, 0) + n
        o = dataclasses.replace(best.outcome, measured=sum(r.outcome.measured for r in rs), counts=counts,
                                trials_total=max(r.outcome.trials_total for r in rs),
                                stop_reason=", ".join(sorted({r.outcome.stop_reason for r in rs})))
        merged.append(flow.KeyResult(key, o, any(r.stored for r in rs)))
    return merged
