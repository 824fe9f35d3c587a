"""The measurement worker: a subprocess that owns the CUDA context.

A config that faults (an illegal address poisons the whole CUDA context), hangs, or kills the
process takes only the worker down: the client records the failure with its reason, starts a
fresh worker and the study goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
import traceback
from typing import Any

from kernels.base import Config, Key
from tuner.tuning.compile_pool import ignore_sigint
from tuner.tuning.measurer import Measurer, Result, Setup, Status

# errors after which the CUDA context cannot be trusted: the worker must be replaced
_STICKY = ("illegal memory access", "illegal instruction", "misaligned address", "unspecified launch failure",
           "device-side assert", "an illegal", "cudaErrorLaunchFailure", "CUDA error: unknown error")


# ---------------------------------------------------------------- the worker process side


class _State:
    def __init__(self, kernel_ref: str, key: Key, dtype: str, device: str, seed: int):
        from kernels import get_kernel
        from tuner.tuning import measure

        self.kernel = get_kernel(kernel_ref)
        self.key, self.dtype, self.device, self.seed = key, dtype, device, seed
        l2 = 0
        if device == "cuda":
            import torch

            l2 = torch.cuda.get_device_properties(0).L2_cache_size
        self.n_sets = measure.n_sets_for(self.kernel, key, dtype, device, l2)
        self.inputs = self.kernel.make_inputs(key, dtype, device, self.n_sets, seed)
        self.checks = 0

    def fresh_check_inputs(self):
        """New random inputs for each check: a kernel must compute the function, not the data."""
        self.checks += 1
        return self.kernel.make_inputs(self.key, self.dtype, self.device, 1, self.seed + 1000 + self.checks)


def _sync_ok(device: str) -> bool:
    if device != "cuda":
        return True
    import torch

    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
        return True
    except Exception:
        return False


def _handle_setup(msg: dict) -> tuple[_State, dict]:
    from tuner.tuning import measure

    st = _State(msg["kernel"], tuple(msg["key"]), msg["dtype"], msg["device"], msg["seed"])
    out: dict[str, Any] = {"n_sets": st.n_sets, "baselines_us": {}, "baseline_errors": {},
                           "first_call_s": {}, "untuned_configs": [], "timing": ""}
    if not msg.get("baselines", True):
        return st, out
    for name, run in st.kernel.baselines(st.key, st.dtype, st.device).items():
        try:
            t0 = time.perf_counter()
            run(st.inputs.sets[0], st.inputs.outs[0])  # FlagGems autotunes here on a new key
            if st.device == "cuda":
                import torch

                torch.cuda.synchronize()
            out["first_call_s"][name] = time.perf_counter() - t0
            chk = measure.check(st.kernel, run, st.fresh_check_inputs())
            us, method = measure.time_runner(run, st.inputs, st.device)
            out["baselines_us"][name] = us
            out["timing"] = method
            wrong = measure.wrong_result(st.kernel, chk, st.dtype)
            if wrong:
                out["baseline_errors"][name] = f"baseline {name}: {wrong}"
        except Exception as e:  # a broken baseline is reported, the search still runs
            out["baseline_errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
    try:
        out["untuned_configs"] = st.kernel.untuned_configs(st.key, st.dtype, st.device)
    except Exception as e:
        out["baseline_errors"]["untuned_configs"] = f"{type(e).__name__}: {str(e)[:300]}"
    return st, out


def _handle_measure(st: _State, config: Config) -> dict:
    from tuner.tuning import measure

    try:
        run = st.kernel.runner(st.key, config, st.dtype, st.device)
        chk = measure.check(st.kernel, run, st.fresh_check_inputs())
        wrong = measure.wrong_result(st.kernel, chk, st.dtype)
        if wrong:
            return {"ok": False, "status": Status.WRONG, "rel_error": chk.rel_error, "max_abs_error": chk.max_abs_error,
                    "reason": wrong}
        us, method = measure.time_runner(run, st.inputs, st.device)
        return {"ok": True, "status": Status.OK, "time_us": us, "timing": method,
                "rel_error": chk.rel_error, "max_abs_error": chk.max_abs_error}
    except Exception as e:
        text = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        status = Status.FAILED
        if any(s in str(e) for s in _STICKY) or not _sync_ok(st.device):
            status = Status.CRASHED
        return {"ok": False, "status": status, "reason": text}


def _handle_confirm(st: _State, configs: list[Config], rounds: int, skip: list[str]) -> dict:
    """Time the finalists and every baseline in turn, `rounds` times, rotating who goes first;
    medians per entry. Timings taken minutes apart can sit on another clock or power state (seen
    on the H100: one 5 ms MoE config timed 15% apart at setup and in the search), so the winner
    and the stored ratios come from this side-by-side pass."""
    from tuner.tuning import measure

    try:
        runners = {f"config{i}": st.kernel.runner(st.key, c, st.dtype, st.device) for i, c in enumerate(configs)}
        runners |= {n: r for n, r in st.kernel.baselines(st.key, st.dtype, st.device).items() if n not in skip}
        names = list(runners)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for n in measure.rotation(names, r):
                samples[n].append(measure.time_runner(runners[n], st.inputs, st.device)[0])
        us = {n: statistics.median(v) for n, v in samples.items()}
        return {"ok": True, "configs": [us.pop(f"config{i}") for i in range(len(configs))], "baselines": us}
    except Exception as e:
        return {"ok": False, "status": Status.FAILED, "reason": f"{type(e).__name__}: {str(e)[:300]}"}


def worker_main(conn, env: dict[str, str]) -> None:
    ignore_sigint()
    os.environ.update(env)
    st: _State | None = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        cmd = msg.get("cmd")
        try:
            if cmd == "exit":
                conn.send({"ok": True})
                return
            if cmd == "setup":
                st, out = _handle_setup(msg)
                conn.send({"ok": True, **out})
            elif cmd == "measure":
                if st is None:
                    conn.send({"ok": False, "status": Status.FAILED, "reason": "measure before setup"})
                    continue
                res = _handle_measure(st, msg["config"])
                conn.send(res)
                if res.get("status") == Status.CRASHED:
                    return  # the CUDA context is gone: let the client start a fresh worker
            elif cmd == "confirm":
                if st is None:
                    conn.send({"ok": False, "status": Status.FAILED, "reason": "confirm before setup"})
                    continue
                conn.send(_handle_confirm(st, msg["configs"], msg["rounds"], msg.get("skip", [])))
            else:
                conn.send({"ok": False, "status": Status.FAILED, "reason": f"unknown command {cmd!r}"})
        except Exception:
            conn.send({"ok": False, "status": Status.FAILED, "reason": traceback.format_exc(limit=3)[-600:]})


# ---------------------------------------------------------------- the client side


class WorkerClient(Measurer):
    """The measurer on a device: starts, talks to and replaces the worker process."""

    def __init__(self, kernel_ref: str, device: str, *, measure_timeout_s: float = 120.0,
                 setup_timeout_s: float = 900.0, flaggems_cache_dir: str | None = None):
        self.kernel_ref, self.device = kernel_ref, device
        self.measure_timeout_s, self.setup_timeout_s = measure_timeout_s, setup_timeout_s
        # a private FlagGems cache: "untuned" must mean FlagGems' own first-call autotune,
        # never a cache seeded by an earlier export
        self._tmp = None
        if flaggems_cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tuner-fgcache-")
            flaggems_cache_dir = self._tmp.name
        self.env = {"FLAGGEMS_CACHE_DIR": flaggems_cache_dir}
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._setup_msg: dict | None = None
        self.restarts = 0

    # -- process management
    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=worker_main, args=(child, self.env), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def _call(self, msg: dict, timeout: float) -> dict:
        if self._proc is None:
            self._start()
            if self._setup_msg is not None and msg.get("cmd") != "setup":
                self.restarts += 1
                reply = self._call({**self._setup_msg, "baselines": False}, self.setup_timeout_s)
                if not reply.get("ok"):
                    raise RuntimeError(f"worker restart failed: {reply.get('reason')}")
        try:
            self._conn.send(msg)
            if not self._conn.poll(timeout):
                self._kill()
                return {"ok": False, "status": Status.HANG, "reason": f"no answer within {timeout:.0f} s (hang)"}
            reply = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self._proc.exitcode if self._proc is not None else None
            if self._proc is not None:
                self._proc.join(timeout=10)
                code = self._proc.exitcode
            self._kill()
            return {"ok": False, "status": Status.CRASHED, "reason": f"worker died (exit code {code})"}
        if reply.get("status") == Status.CRASHED:
            self._kill()
        return reply

    # -- protocol
    def setup(self, key: Key, dtype: str, seed: int = 0) -> Setup:
        self._setup_msg = {"cmd": "setup", "kernel": self.kernel_ref, "key": list(key), "dtype": dtype,
                           "device": self.device, "seed": seed}
        reply = self._call(self._setup_msg, self.setup_timeout_s)
        if not reply.get("ok"):
            raise RuntimeError(f"worker setup failed: {reply.get('reason')}")
        return Setup(baselines_us=reply["baselines_us"], baseline_errors=reply["baseline_errors"],
                     first_call_s=reply["first_call_s"], untuned_configs=reply["untuned_configs"],
                     timing=reply["timing"], n_sets=reply["n_sets"])

    def measure(self, config: Config) -> Result:
        reply = self._call({"cmd": "measure", "config": config}, self.measure_timeout_s)
        return Result(ok=bool(reply.get("ok")), time_us=reply.get("time_us"), rel_error=reply.get("rel_error"),
                      max_abs_error=reply.get("max_abs_error"), reason=reply.get("reason"),
                      status=reply.get("status", Status.FAILED), timing=reply.get("timing", ""))

    def confirm(self, configs: list[Config], rounds: int, skip: list[str] = ()) -> dict | None:
        """Side-by-side medians {"configs": [us per config], "baselines": {name: us}}, or None
        if that pass failed."""
        timeout = self.measure_timeout_s * (1 + rounds)
        reply = self._call({"cmd": "confirm", "configs": list(configs), "rounds": rounds, "skip": list(skip)},
                           timeout)
        return {"configs": reply["configs"], "baselines": reply["baselines"]} if reply.get("ok") else None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send({"cmd": "exit"})
                self._conn.poll(5)
            except (BrokenPipeError, OSError):
                pass
        self._kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "WorkerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
