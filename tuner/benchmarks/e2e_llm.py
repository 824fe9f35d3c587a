"""Issue 4 (b): the MiniCPM-o 2.6 LLM end to end, native vs FlagGems untuned vs FlagGems tuned.

Cases: one decode step at each batch of --decode-batches against a transformers StaticCache
(--cache-len slots, --filled of them holding random K/V), captured in a CUDA graph and replayed;
prefill of each --prefill length at batch 1, eager (the workload's text prefill step:
logits for the last position only). Random bf16 weights from tuner.profiling.workload (seeded: every mode
builds the same model), all inputs made with plain torch before FlagGems is switched on.

One mode per process (`--mode`):
- native:  plain torch.
- untuned: flag_gems.enable(unused=EXCLUDE) on a fresh private FlagGems cache database, so it
           autotunes every new key on first use, as a fresh server would.
- tuned:   the tuned configs of `--db` (what `tuner serve --use-tuned` selects) written to a runtime
           folder and applied in-process (tuner.inject.plugin.apply_state): FlagGems minus EXCLUDE,
           its LibTuner cache seeded, split-K winners installed; the counts are logged.
FlagGems autotunes (LibTuner / triton.autotune cache misses) are counted by phase: setup,
warmup, capture and check (all before timing) and timed.

The driver (`--modes native,untuned,tuned`) runs each mode in its own subprocess (fresh CUDA
context and FlagGems state) with a timeout, then prints one JSON line per mode and a markdown
table. On a CPU (`--device cpu`) there is no CUDA graph: decode is timed eagerly, labelled so.

    python -m tuner.benchmarks.e2e_llm --modes native,untuned,tuned --db tuner.db --out-dir out
    python -m tuner.benchmarks.e2e_llm --device cpu --scale 0.05 --modes native
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

# untuned_memo: FlagGems untuned with tuner's in-memory config cache (tuner/inject/flaggems_memo.py),
# to split the tuned mode's gain into the memo's (host time) and the configs' (GPU time)
MODES = ("native", "untuned", "tuned", "untuned_memo")
DEFAULT_EXCLUDE = "mul"  # the ops the H100 consistency check found failing (results/profile/check.json)
DEFAULT_TIMEOUT_S = 600.0
BEFORE_TIMING = ("setup", "warmup", "capture", "check")
PHASES = (*BEFORE_TIMING, "timed")
MIN_MODE_S = 60.0  # with --budget: what each later mode is left at least
REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("tuner.e2e_llm")


# ---- counting autotunes ----------------------------------------------------------------------
class AutotuneCounter:
    """Counts Triton autotuner cache misses, FlagGems' LibTuner included, by phase and case.

    Both triton.runtime.Autotuner.run and FlagGems' LibTuner.run (its subclass) call
    `prune_configs` only when a key is not in the cache, right before benchmarking the configs,
    and `_bench` once per config measured; the hit path is untouched, so counting costs nothing
    in a timed region that does not autotune.
    """

    def __init__(self) -> None:
        self.phase = "setup"
        self.case: str | None = None
        self.events: list[dict[str, Any]] = []
        self._open: dict[int, tuple[dict, Any]] = {}  # id(tuner) -> (event, tuner)
        self.installed = False

    def install(self) -> None:
        try:
            from triton.runtime import autotuner
        except ImportError:  # no Triton: nothing can autotune
            return
        base = autotuner.Autotuner
        prune, bench, counter = base.prune_configs, base._bench, self

        def prune_configs(tuner, kwargs, *a, **k):
            counter._begin(tuner, kwargs)
            return prune(tuner, kwargs, *a, **k)

        def _bench(tuner, *a, **k):
            entry = counter._open.get(id(tuner))
            if entry is not None:
                entry[0]["benchmarked"] += 1
            return bench(tuner, *a, **k)

        base.prune_configs, base._bench = prune_configs, _bench
        self.installed = True

    def _begin(self, tuner, kwargs) -> None:
        self._close_all()
        try:
            from flag_gems.utils.libentry import LibTuner

            libtuner = isinstance(tuner, LibTuner)
        except Exception:  # FlagGems absent or not importable: a plain triton.autotune
            libtuner = False
        event = {"phase": self.phase, "case": self.case, "libtuner": libtuner,
                 "kernel": getattr(getattr(tuner, "base_fn", None), "__name__", type(tuner).__name__),
                 "key": _autotune_key(tuner, kwargs, libtuner), "configs": len(getattr(tuner, "configs", ())),
                 "benchmarked": 0, "seconds": None}
        self.events.append(event)
        self._open[id(tuner)] = (event, tuner)
        log.info("autotune [%s/%s] %s %s", self.phase, self.case, event["kernel"], event["key"])

    def _close_all(self) -> None:
        for event, tuner in self._open.values():  # bench_time is set once the benchmarking ended
            t = getattr(tuner, "bench_time", None)
            event["seconds"] = round(t, 3) if isinstance(t, (int, float)) else None
        self._open.clear()

    @contextmanager
    def at(self, phase: str, case: str | None = None):
        self._close_all()
        self.phase, self.case = phase, case if case is not None else self.case
        try:
            yield
        finally:
            self._close_all()

    def counts(self, case: str | None = None) -> dict[str, int]:
        c = Counter(e["phase"] for e in self.events if case is None or e["case"] == case)
        out = {p: c.get(p, 0) for p in PHASES}
        out["before_timing"] = sum(out[p] for p in BEFORE_TIMING)
        return out

    def summary(self) -> dict[str, Any]:
        self._close_all()
        kinds = Counter(e["kernel"] for e in self.events)
        return {**self.counts(), "installed": self.installed,
                "libtuner": sum(1 for e in self.events if e["libtuner"]),
                "by_kernel": dict(kinds), "events": self.events[:300]}


def _autotune_key(tuner, kwargs, libtuner: bool) -> str:
    """The cache key the autotuner is missing (as its run computed it from tuner.nargs)."""
    try:
        args = {**(tuner.nargs or {}), **kwargs}
        args = {k: v for k, v in args.items() if k in tuner.arg_names}
        if libtuner:
            key = tuner.get_key(args)
        else:
            key = tuple([args[k] for k in tuner.keys if k in args]
                        + [str(v.dtype) for v in args.values() if hasattr(v, "dtype")])
        return repr(key)[:300]
    except Exception as e:  # counting must never break the run
        return f"? ({type(e).__name__})"


# ---- one mode ---------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    out = [int(x) for x in str(text).split(",") if x.strip()]
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return out


def _environment(device: str) -> dict[str, Any]:
    import importlib.metadata

    from tuner.fingerprint import collect

    env = collect("cuda" if device.startswith("cuda") else "cpu").as_dict()
    try:
        env["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        env["transformers"] = None
    return env


def _write_json(path: str | None, result: dict) -> None:
    """The mode's JSON line, rewritten after every case so a timed-out mode keeps what it did."""
    if not path:
        return
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(result, default=str) + "\n")
    os.replace(tmp, p)


def _enable_flaggems(opts, work: Path, max_tokens: int) -> dict[str, Any]:
    """Switch FlagGems on for this process as `opts.mode` says; what was done, for the JSON."""
    exclude = [x for x in opts.exclude.split(",") if x.strip()]
    # each mode gets its own FlagGems cache database: nothing inherited, nothing left to the next
    os.environ.pop("FLAGGEMS_DB_URL", None)
    if opts.mode in ("untuned", "untuned_memo"):
        db = work / f"flaggems_{opts.mode}.db"
        db.unlink(missing_ok=True)
        os.environ["FLAGGEMS_DB_URL"] = f"sqlite:///{db}"
        import flag_gems

        flag_gems.enable(unused=list(exclude))  # a list: no vendor default exclude list
        if opts.mode == "untuned_memo":
            from tuner.inject.flaggems_memo import install_config_memo

            install_config_memo()
        return {"exclude_ops": exclude, "flaggems_db_url": os.environ["FLAGGEMS_DB_URL"],
                "config_memo": opts.mode == "untuned_memo"}
    from tuner.inject.plugin import apply_state, write_runtime_dir
    from tuner.serving.flow import select_records

    records = select_records(opts.db, opts.allow_foreign)
    folder = write_runtime_dir(work / "runtime", records, exclude, max_tokens=max_tokens,
                               allow_foreign=opts.allow_foreign)
    counts = apply_state(folder)
    log.info("tuner plugin: %d records from the DB; applied: fused_moe %d, mm via FlagGems cache %d, "
             "addmm %d, bmm %d, GEMM keys routed %d; FlagGems excluded ops: %s", len(records), counts["fused_moe"],
             counts["mm_flaggems"], counts["addmm_flaggems"], counts["bmm_flaggems"], counts["gemm_routes"],
             ", ".join(counts["exclude_ops"]) or "none")
    return {"exclude_ops": exclude, "records": len(records), "plugin": counts, "runtime_dir": str(folder),
            "flaggems_db_url": os.environ.get("FLAGGEMS_DB_URL")}


class _Clock:
    """Milliseconds per call of `fn` over n calls: CUDA events on a GPU, wall time on a CPU."""

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda = torch, cuda

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def ms(self, fn: Callable[[], Any], n: int) -> float:
        if not self.cuda:
            t = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t) * 1e3 / n
        start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n


def _top1(logits) -> list[int]:
    # on the host: no FlagGems kernel runs for the check
    return logits[:, -1].detach().cpu().float().argmax(-1).tolist()


def _max_abs(a, b) -> float:
    return float((a.detach().cpu().float() - b.detach().cpu().float()).abs().max())


def _check(fn: Callable[[], dict]) -> dict:
    """A correctness side-check (top-1 tokens, graph vs eager): its failure must not lose the timing."""
    try:
        return fn()
    except Exception as e:
        return {"check_error": f"{type(e).__name__}: {e}"[:300]}


def _decode_case(torch, llm, prep: dict, opts, clock: _Clock, counter: AutotuneCounter, name: str) -> dict:
    cache, ids = prep["cache"], prep["ids"]
    lengths = [layer.cumulative_length for layer in cache.layers]  # device tensors, updated in place
    # the position follows the cache length on the device, so each replay is the next decode step
    pos = lengths[0].view(1, 1).expand(prep["batch"], 1)

    def reset() -> None:  # each step appends one token: start every run from --filled again
        for t in lengths:
            t.fill_(opts.filled)

    def step():
        return llm(input_ids=ids, position_ids=pos, cache=cache, use_cache=True).logits

    res: dict[str, Any] = {"kind": "decode", "batch": prep["batch"], "cache_len": opts.cache_len,
                           "filled": opts.filled, "iters": opts.iters, "repeats": opts.repeats}
    with counter.at("warmup", name):
        for _ in range(opts.warmup):
            reset()
            eager = step()
        clock.sync()
    run, res["timing"] = step, "cuda-graph" if clock.cuda else "cpu-eager"
    if clock.cuda:
        try:
            with counter.at("capture", name):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm up off the default stream, as capture wants
                    reset()
                    step()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                reset()
                with torch.cuda.graph(graph):
                    static_out = step()
            with counter.at("check", name):
                reset()
                graph.replay()
                clock.sync()
                res.update(_check(lambda: {"graph_vs_eager_max_abs": _max_abs(static_out, eager)}))
                eager = static_out
            run = graph.replay
        except Exception as e:  # time it eagerly, labelled, rather than lose the case
            res["graph_error"] = f"{type(e).__name__}: {e}"[:500]
            res["timing"] = "eager (graph capture failed)"
            log.warning("%s: CUDA graph capture failed (%s); timing eagerly", name, res["graph_error"])
            clock.sync()
    res.update(_check(lambda: {"top1": _top1(eager)}))
    samples = []
    with counter.at("timed", name):
        for _ in range(opts.repeats):
            reset()
            clock.sync()
            samples.append(clock.ms(run, opts.iters))
    res["samples_ms"] = [round(s, 4) for s in samples]
    res["ms"] = statistics.median(samples)
    return res


def _prefill_case(step, tokens: int, opts, clock: _Clock, counter: AutotuneCounter, name: str) -> dict:
    res: dict[str, Any] = {"kind": "prefill", "batch": 1, "tokens": tokens, "repeats": opts.repeats,
                           "timing": "eager" if clock.cuda else "cpu-eager", "step": step.name}
    with counter.at("warmup", name):
        for _ in range(opts.warmup):
            out = step.run()
        clock.sync()
    res.update(_check(lambda: {"top1": _top1(out)}))
    with counter.at("timed", name):
        samples = [clock.ms(step.run, 1) for _ in range(opts.repeats)]
    res["samples_ms"] = [round(s, 4) for s in samples]
    res["ms"] = statistics.median(samples)
    return res


def case_names(opts) -> list[str]:
    return [f"decode_bs{b}" for b in opts.decode_batches] + [f"prefill_{s}" for s in opts.prefill]


def run_mode(opts) -> dict[str, Any]:
    """Build, prepare, switch FlagGems on as the mode says, time every case; the mode's JSON."""
    t0 = time.monotonic()
    counter = AutotuneCounter()
    counter.install()
    result: dict[str, Any] = {"mode": opts.mode, "status": "running", "error": None, "scale": opts.scale,
                              "cases": {}, "wall_s": {}}
    try:
        _run_mode(opts, result, counter, _Laps(result["wall_s"], t0))
        failed = [n for n, c in result["cases"].items() if c.get("error")]
        result["status"] = "ok" if not failed else "case errors"
        if failed:
            result["error"] = f"{len(failed)} case(s) failed: {', '.join(failed)}"
    except Exception as e:
        result["status"], result["error"] = "error", f"{type(e).__name__}: {e}"[:2000]
        log.exception("mode %s failed", opts.mode)
    result["autotune"] = counter.summary()
    result["wall_s"]["total"] = round(time.monotonic() - t0, 2)
    return result


class _Laps:
    """Seconds since the previous lap (the first one: since t0), by name, into `wall`."""

    def __init__(self, wall: dict[str, float], t0: float) -> None:
        self.wall, self.last = wall, t0

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.wall[name] = round(now - self.last, 2)
        self.last = now


def _run_mode(opts, result: dict[str, Any], counter: AutotuneCounter, lap: _Laps) -> None:
    """run_mode's stages; each writes what it learns into `result` at once, so an error keeps it."""
    import torch
    from transformers import StaticCache

    from tuner.profiling.workload.model import build_model, describe

    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    result["device"] = device
    result["environment"] = _environment(device)
    if opts.mode != "native" and not cuda:
        raise RuntimeError(f"mode {opts.mode} runs FlagGems, which needs a CUDA GPU; this run is on {device}")
    if opts.filled + opts.iters > opts.cache_len:
        raise ValueError(f"--filled {opts.filled} + --iters {opts.iters} decode steps overflow "
                         f"--cache-len {opts.cache_len}")
    torch.manual_seed(opts.seed)
    lap("import")
    with torch.inference_mode():
        model = build_model(opts.scale, torch.bfloat16, device, components=["llm"], seed=opts.seed)
        result["model"] = {k: v for k, v in describe(model).items() if k != "dims"} | {"llm": model.dims.as_dict()["llm"]}
        if cuda:
            torch.cuda.synchronize()
        lap("build")
        decode, prefill = _make_inputs(torch, StaticCache, model, opts, device)
        if cuda:
            torch.cuda.synchronize()
        lap("prepare")
        max_tokens = max([*opts.prefill, *opts.decode_batches])
        work = Path(opts.work_dir or tempfile.mkdtemp(prefix=f"e2e_{opts.mode}_"))
        work.mkdir(parents=True, exist_ok=True)
        if opts.mode != "native":
            result.update(_enable_flaggems(opts, work, max_tokens))
        lap("enable")
        result["status"] = "cases"
        _write_json(opts.json_out, result)
        _time_cases(torch, model.llm, decode, prefill, opts, _Clock(torch, cuda), counter, result, lap)
        if cuda:
            result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)


def _make_inputs(torch, cache_cls, model, opts, device: str) -> tuple[dict[int, dict], dict[int, Any]]:
    """Every input (random K/V included), made now with plain torch, the same in each mode: per decode
    batch a StaticCache with --filled positions and the next tokens; per prefill length its text step."""
    from tuner.profiling.workload.requests import RequestOptions, build_requests

    d = model.dims.llm
    gen = torch.Generator(device=device).manual_seed(opts.seed + 1)
    decode = {}
    for b in opts.decode_batches:
        cache = cache_cls(config=model.llm.config, max_cache_len=opts.cache_len)
        shape = (b, d.kv_heads, opts.filled, d.head_dim)
        for i in range(d.layers):
            kv = [torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(2)]
            cache.update(*kv, i)
        decode[b] = {"batch": b, "cache": cache,
                     "ids": torch.randint(d.vocab, (b, 1), generator=gen, device=device)}
    prefill = {}
    for s in opts.prefill:
        ro = RequestOptions(prompt_tokens=s, prefill_batch=1, decode_batches=(1,), decode_steps=1)
        prefill[s] = build_requests(model, "text", ro, seed=opts.seed + s)[0]  # the text.prefill step
    return decode, prefill


def _time_cases(torch, llm, decode: dict, prefill: dict, opts, clock: _Clock, counter: AutotuneCounter,
                result: dict[str, Any], lap: _Laps) -> None:
    """Every decode batch, then every prefill length; the mode's JSON rewritten after each case."""

    def time_case(name: str, fn: Callable[[], dict]) -> None:
        result["cases"][name] = _guarded(fn)
        result["cases"][name]["autotunes"] = counter.counts(name)

    for b, prep in decode.items():
        name = f"decode_bs{b}"
        time_case(name, partial(_decode_case, torch, llm, prep, opts, clock, counter, name))
        decode[b] = prep = None  # release this batch's cache and graph
        if clock.cuda:
            torch.cuda.empty_cache()
        lap(name)
        _write_json(opts.json_out, result | {"autotune": counter.summary()})
    for s, step in prefill.items():
        name = f"prefill_{s}"
        time_case(name, partial(_prefill_case, step, s, opts, clock, counter, name))
        lap(name)
        _write_json(opts.json_out, result | {"autotune": counter.summary()})


def _guarded(fn: Callable[[], dict]) -> dict:
    """One case's result, or its error: a failing case does not stop the others."""
    try:
        return fn()
    except Exception as e:
        log.exception("case failed")
        return {"error": f"{type(e).__name__}: {e}"[:1000]}


# ---- the driver -------------------------------------------------------------------------------
def _timeouts(text: str, modes: list[str]) -> dict[str, float]:
    """'300' (every mode) or 'native=90,untuned=300,tuned=150' (unnamed modes: the default)."""
    if "=" not in text:
        return {m: float(text) for m in modes}
    out = {m: DEFAULT_TIMEOUT_S for m in modes}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in MODES:
            raise ValueError(f"--timeout names unknown mode {name!r}")
        out[name.strip()] = float(value)
    return out


def _child_args(opts, mode: str, json_out: Path, work: Path) -> list[str]:
    args = [sys.executable, "-m", "tuner.benchmarks.e2e_llm", "--mode", mode, "--json-out", str(json_out),
            "--work-dir", str(work), "--scale", str(opts.scale),
            "--decode-batches", ",".join(map(str, opts.decode_batches)),
            "--prefill", ",".join(map(str, opts.prefill)), "--cache-len", str(opts.cache_len),
            "--filled", str(opts.filled), "--iters", str(opts.iters), "--repeats", str(opts.repeats),
            "--warmup", str(opts.warmup), "--exclude", opts.exclude, "--seed", str(opts.seed)]
    if opts.device:
        args += ["--device", opts.device]
    if opts.db:
        args += ["--db", opts.db]
    if opts.allow_foreign:
        args.append("--allow-foreign")
    return args


def _log_autotunes(log_path: Path) -> int:
    """LibTuner autotunes FlagGems printed (TRITON_PRINT_AUTOTUNING=1): a cross-check of the counter."""
    from tuner.benchmarks.serve_probe import AUTOTUNE_LINE

    return len(AUTOTUNE_LINE.findall(log_path.read_text(errors="replace")))


def run_child(opts, mode: str, out_dir: Path, timeout_s: float) -> dict[str, Any]:
    json_out, log_path = out_dir / f"e2e_{mode}.json", out_dir / f"e2e_{mode}.log"
    json_out.unlink(missing_ok=True)
    env = {**os.environ, "TRITON_PRINT_AUTOTUNING": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    t0 = time.monotonic()
    status, rc = None, None
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(_child_args(opts, mode, json_out, out_dir / f"work_{mode}"), cwd=REPO, env=env,
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            status = f"timeout after {timeout_s:.0f} s"
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)
                    rc = proc.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    rc = proc.wait()
                    break
    wall = time.monotonic() - t0
    try:
        res = json.loads(json_out.read_text())
    except (OSError, ValueError):
        res = {"mode": mode, "cases": {}}
    if status is None:  # the child says how it ended (exit 0 for ok, 1 otherwise), unless it died
        finished = res.get("status") in ("ok", "case errors", "error") and rc == (0 if res["status"] == "ok" else 1)
        status = res["status"] if finished else f"crashed (rc {rc})"
    if status != "ok" and not res.get("error"):
        tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        res["error"] = " | ".join(tail)[-1000:] or None
    res.update({"mode": mode, "status": status, "rc": rc, "driver_wall_s": round(wall, 1),
                "timeout_s": round(timeout_s, 1), "log": str(log_path),
                "log_libtuner_autotunes": _log_autotunes(log_path)})
    return res


def _fmt(x: float | None, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _ms(res: dict | None, case: str) -> float | None:
    c = (res or {}).get("cases", {}).get(case) or {}
    return c.get("ms")


def _cell(res: dict | None, case: str, nominal: str) -> str:
    if res is None:
        return "not run"
    c = res.get("cases", {}).get(case)
    if c is None or c.get("ms") is None:
        status = str(res.get("status", ""))
        if c and c.get("error"):
            return "failed"
        if status.startswith("timeout"):
            return "timed out"
        return {"error": "error", "ok": "—"}.get(status, "crashed")
    label = "" if c.get("timing") == nominal else f" ({c.get('timing')})"
    return f"{c['ms']:.3f}{label}"


def _nominal_timing(case: str, results: list[dict]) -> str:
    """How native timed the case, else the first mode that timed it; other labels are shown per cell."""
    timings = [((r.get("cases", {}).get(case) or {}).get("timing"), r["mode"] != "native") for r in results]
    timings = sorted((native_last, t) for t, native_last in timings if t)
    return timings[0][1] if timings else "?"


def _agreement(res: dict, native: dict | None) -> str:
    if native is None or res is native:
        return "—"
    same = total = 0
    for name, c in res.get("cases", {}).items():
        a, b = c.get("top1"), (native.get("cases", {}).get(name) or {}).get("top1")
        if a and b and len(a) == len(b):
            same += sum(x == y for x, y in zip(a, b))
            total += len(a)
    return f"{same}/{total}" if total else "—"


def render_table(results: list[dict], cases: list[str]) -> str:
    """The markdown report: per case times and ratios, then one row per mode."""
    by = {r["mode"]: r for r in results}
    nat, unt, tun = by.get("native"), by.get("untuned"), by.get("tuned")
    memo = by.get("untuned_memo")
    lines = ["| case | native ms | untuned ms | tuned ms | untuned/native | tuned/native | tuned/untuned |"
             + (" untuned+memo ms | untuned+memo/native |" if memo else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if memo else "")]
    ratios: dict[str, float] = {}
    for case in cases:
        nominal = _nominal_timing(case, results)
        n, u, t = _ms(nat, case), _ms(unt, case), _ms(tun, case)
        r = (lambda a, b: a / b if a is not None and b else None)
        if r(t, n) is not None:
            ratios[case] = r(t, n)
        label = case.replace("decode_bs", "decode bs=").replace("prefill_", "prefill S=")
        lines.append(f"| {label} [{nominal}] | {_cell(nat, case, nominal)} | {_cell(unt, case, nominal)} | "
                     f"{_cell(tun, case, nominal)} | {_fmt(r(u, n))} | {_fmt(r(t, n))} | {_fmt(r(t, u))} |"
                     + (f" {_cell(memo, case, nominal)} | {_fmt(r(_ms(memo, case), n))} |" if memo else ""))
    lines += ["", ("| mode | status | wall s | autotunes before timing | autotunes timed | autotuned kernels "
                   "| top-1 = native | tuner plugin |"), "|---|---|---|---|---|---|---|---|"]
    for res in results:
        a = res.get("autotune") or {}
        kernels = ", ".join(f"{k} {v}" for k, v in sorted((a.get("by_kernel") or {}).items())) or "none"
        plugin = res.get("plugin")
        plugin_txt = "—" if not plugin else (f"mm cache {plugin.get('mm_flaggems')}, routed {plugin.get('gemm_routes', plugin.get('mm_splitk'))}, "
                                             f"addmm {plugin.get('addmm_flaggems', 0)}, bmm {plugin.get('bmm_flaggems', 0)}, "
                                             f"moe {plugin.get('fused_moe')} (of {res.get('records')} records)")
        lines.append(f"| {res['mode']} | {res.get('status')} | {res.get('driver_wall_s', '—')} | "
                     f"{a.get('before_timing', '—')} | {a.get('timed', '—')} | {kernels} | "
                     f"{_agreement(res, nat)} | {plugin_txt} |")
    if tun is not None and tun.get("cases"):
        a = tun.get("autotune") or {}
        lines.append("")
        lines.append(f"- tuned, autotunes in the whole run: {a.get('before_timing', '—')} before timing, "
                     f"{a.get('timed', '—')} timed (target: 0)")
        if ratios:
            worst = max(ratios, key=ratios.get)
            ok = all(v <= 1.05 for v in ratios.values()) and len(ratios) == len(cases)
            lines.append(f"- tuned <= 1.05x native on every case: {'yes' if ok else 'no'} "
                         f"({len(ratios)}/{len(cases)} cases measured; worst {worst} {ratios[worst]:.3f})")
    return "\n".join(lines)


def drive(opts) -> int:
    modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(f"error: --modes takes {', '.join(MODES)}; got {opts.modes!r}")
    timeouts = _timeouts(opts.timeout, modes)
    out_dir = Path(opts.out_dir or tempfile.mkdtemp(prefix="e2e_llm_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results = []
    for i, mode in enumerate(modes):
        timeout = timeouts[mode]
        if opts.budget is not None:  # leave each later mode MIN_MODE_S at least
            left = opts.budget - (time.monotonic() - t0) - MIN_MODE_S * (len(modes) - i - 1)
            timeout = max(10.0, min(timeout, left))
        print(f"e2e_llm: mode {mode} (timeout {timeout:.0f} s, log {out_dir / f'e2e_{mode}.log'})",
              file=sys.stderr, flush=True)
        res = run_child(opts, mode, out_dir, timeout)
        print(f"e2e_llm: mode {mode}: {res['status']} in {res['driver_wall_s']} s", file=sys.stderr, flush=True)
        results.append(res)
    lines = [json.dumps(r, default=str) for r in results]
    if opts.json_out:
        Path(opts.json_out).write_text("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    table = render_table(results, case_names(opts))
    if opts.table_out:
        Path(opts.table_out).write_text(table + "\n")
    print(table)
    return 0 if all(r["status"] == "ok" for r in results) else 1


# ---- command line -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(prog="python -m tuner.benchmarks.e2e_llm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--mode", choices=MODES, help="run one mode in this process")
    which.add_argument("--modes", help="driver: these modes (comma-separated), each in its own subprocess")
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--scale", type=float, default=1.0, help="model scale (1.0: the real dims; 0.05 for CPU runs)")
    p.add_argument("--decode-batches", type=_ints, default=[1, 16, 64])
    p.add_argument("--prefill", type=_ints, default=[512, 2048], help="prefill lengths, batch 1")
    p.add_argument("--cache-len", type=int, default=1024, help="StaticCache slots for decode")
    p.add_argument("--filled", type=int, default=512, help="cache positions holding K/V before each step")
    p.add_argument("--iters", type=int, default=20, help="decode steps (graph replays) per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="eager runs before capture / timing")
    p.add_argument("--exclude", default=DEFAULT_EXCLUDE, help="FlagGems ops left out (comma-separated)")
    p.add_argument("--db", default=None, help="tuner database with the tuned configs (tuned mode)")
    p.add_argument("--allow-foreign", action="store_true", help="tuned: accept results from another GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None, help="JSON line(s) here instead of stdout")
    p.add_argument("--work-dir", default=None, help="--mode: folder for the FlagGems cache / runtime folder")
    p.add_argument("--out-dir", default=None, help="driver: per-mode JSON, logs and work folders")
    p.add_argument("--table-out", default=None, help="driver: also write the markdown table here")
    p.add_argument("--timeout", default=str(int(DEFAULT_TIMEOUT_S)),
                   help="driver: seconds per mode, or native=S,untuned=S,tuned=S")
    p.add_argument("--budget", type=float, default=None,
                   help=f"driver: seconds for all modes; a mode's timeout shrinks to keep {MIN_MODE_S:.0f} s "
                        "for each later one")
    opts = p.parse_args(argv)
    for name in ("cache_len", "filled", "iters", "repeats", "warmup"):
        if getattr(opts, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    if opts.modes:
        return drive(opts)
    result = run_mode(opts)
    if opts.json_out:
        _write_json(opts.json_out, result)
    else:
        print(json.dumps(result, default=str), flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
