"""Do the search's timings and the side-by-side pass run at different clocks? An experiment for
issue 12 (H200).

On compute-bound GEMM keys the finalists' pass (tuner.tuning.finalists: 5 rounds back to back)
timed the best config 6-16% slower than the search had (gate_up at M=4096: 1617.5 against
1397.6 us, session 16), while on memory-bound decode keys the two agree within 2% (17 of 20). One
reading: the search times each config once after seconds of idle GPU (the next config compiling),
at the boost clock, and the pass keeps the GPU busy long enough to reach its 700 W power cap and a
lower clock. If so the search ranks configs by a clock the engine does not hold either. Here each
key's cuBLAS, FlagGems untuned and tuned kernels are timed both ways, exactly as tuner times them
(measure.time_runner), with the SM clock, power, temperature and NVML's clock-event reasons sampled
every few ms during each timing.

Each warm-up of --warm-ms is a third kind of timing: the search's, with that much untimed work on
the GPU just before it (measure.time_runner's warm_ms): would a warm-up put a search timing in the
pass's regime? (Session 17, H200: no. 250 and 1000 ms timed 0.91-1.22x the pass, the clock dipping
as low as 1230 MHz while the power cap settles; results/gemm_h200/session17.)

usage: python -m tuner.benchmarks.clock_probe [--db URL] [--idle 2] [--rounds 5] [--warm-ms 250,1000]
  (on the GPU host; --db: a tuner database whose best mm / addmm configs are timed beside cuBLAS)
One JSON line per key, regime and runner, then a line per key: time and clock, sustained / search.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping

# (op, M, N, K): the large prefill keys of run 10's engine, the set's worst key (q/k/v at M=512,
# 1.59x cuBLAS: do short timings rank it at another clock too?) and a memory-bound decode control
KEYS = [("mm", 4096, 37888, 3584), ("mm", 4096, 3584, 18944), ("addmm", 4096, 4608, 3584),
        ("addmm", 512, 4608, 3584), ("mm", 64, 37888, 3584)]
WARMED = "warmed_"  # + the warm-up's ms: a search-like timing after that much untimed GPU work
SAMPLE_S = 0.005  # NVML reads every 5 ms: a search timing takes ~15-40 ms of GPU time

# NVML's clock-event reason bits (nvmlClocksEventReason*), named as nvidia-smi -q names them
REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
           0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
           0x100: "display_clocks"}


def reason_names(mask: int) -> list[str]:
    """The reasons a clock-event bitmask holds, by name (unknown bits as hex)."""
    names = [name for bit, name in REASONS.items() if mask & bit]
    rest = mask & ~sum(REASONS)
    return names + ([hex(rest)] if rest else [])


def summarise(samples: Iterable[tuple[float, float, int, float]]) -> dict:
    """(sm MHz, W, reason mask, deg C) samples of one timing: median clock and power, the hottest
    reading (a drift over minutes of tuning would show there), the reasons seen."""
    samples = list(samples)
    if not samples:
        return {"samples": 0}
    mask = 0
    for s in samples:
        mask |= s[2]
    return {"samples": len(samples), "sm_mhz": statistics.median(s[0] for s in samples),
            "sm_mhz_min": min(s[0] for s in samples), "power_w": statistics.median(s[1] for s in samples),
            "temp_c": max(s[3] for s in samples), "reasons": reason_names(mask)}


def _median(values: Iterable[float | None]) -> float | None:
    """The median of the readings there are (a timing too short for a sample has none)."""
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def ratio_line(key: tuple, rows: Mapping[tuple[str, str], dict]) -> dict:
    """Per runner: sustained / search time and clock (a time ratio the clock ratio's inverse
    explains means the clock is the difference), and each warmed regime's time / sustained (1.0: a
    warm-up that long before a search timing puts it in the pass's regime)."""
    out: dict = {"key": list(key)}
    for runner in sorted({r for _, r in rows}):
        s, p = rows.get(("search", runner)), rows.get(("sustained", runner))
        line: dict = {}
        if s and p and s.get("time_us") and s.get("sm_mhz"):
            line = {"time_ratio": round(p["time_us"] / s["time_us"], 4),
                    "clock_ratio": round(p["sm_mhz"] / s["sm_mhz"], 4)}
        for regime in sorted(r for r, n in rows if n == runner and r.startswith(WARMED)):
            w = rows[(regime, runner)]
            if p and p.get("time_us") and w.get("time_us"):  # (needs no clock reading)
                line[f"{regime}_vs_sustained"] = round(w["time_us"] / p["time_us"], 4)
        if line:
            out[runner] = line
    return out


class Sampler:
    """NVML readings of one GPU in a background thread while a timing runs."""

    def __init__(self, handle, nvml):
        self.handle, self.nvml = handle, nvml
        self.samples: list[tuple[float, float, int, float]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[float, float, int, float]:
        n = self.nvml
        reasons = (getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)  # (its name since NVML 12.2)
                   or n.nvmlDeviceGetCurrentClocksThrottleReasons)
        return (float(n.nvmlDeviceGetClockInfo(self.handle, n.NVML_CLOCK_SM)),
                n.nvmlDeviceGetPowerUsage(self.handle) / 1000.0, int(reasons(self.handle)),
                float(n.nvmlDeviceGetTemperature(self.handle, n.NVML_TEMPERATURE_GPU)))

    def _loop(self) -> None:
        # the first reading one period in: the timing has started (a reading at once is the idle GPU)
        while not self._stop.wait(SAMPLE_S):
            try:
                self.samples.append(self._read())
            except Exception as e:  # an NVML error ends the readings, not the probe (named in its row)
                self.error = f"{type(e).__name__}: {e}"
                return

    def __enter__(self) -> "Sampler":
        self.samples, self.error = [], None
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def nvml_handle(nvml):
    """The NVML handle of torch's current CUDA device (by UUID: NVML ignores CUDA_VISIBLE_DEVICES)."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    return nvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())


def tuned_configs(url: str | None, keys: Iterable[tuple] = KEYS) -> dict[tuple, dict]:
    """(op, M, N, K) -> the database's best config for `keys` (bf16, Linear layout)."""
    if not url:
        return {}
    from db.queries import stored_records
    from tuner.benchmarks.route_headroom import linear_key

    out, wanted = {}, set(keys)
    for r in stored_records(url):  # (attention, MoE and bmm records have other keys: None)
        key = linear_key(r)
        if key is not None and key[4] == "bf16" and key[:4] in wanted:
            out[key[:4]] = r["config"]
    return out


def key_runners(key: tuple, config: dict | None, untuned: bool = True):
    """(inputs, {name: runner}) of an (op, M, N, K) key in nn.Linear's layout, bf16 on the GPU, as
    tuner times it (input sets over 3x the L2): cuBLAS, FlagGems untuned (unless not `untuned`) as
    the finalists' pass has them, and `config` as "tuned"; each compiled and warm."""
    import torch

    from kernels import get_kernel
    from tuner.tuning import measure

    op, M, N, K = key
    kernel = get_kernel(op)
    kkey = (M, N, K, 1)
    l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    inputs = kernel.make_inputs(kkey, "bf16", "cuda", measure.n_sets_for(kernel, kkey, "bf16", "cuda", l2), 0)
    runners = {("cublas" if n == "native" else n): r for n, r in kernel.baselines(kkey, "bf16", "cuda").items()
               if untuned or n == "native"}
    if config:
        runners["tuned"] = kernel.runner(kkey, config, "bf16", "cuda")
    for run in runners.values():  # compiled and warm outside every timing
        measure.time_runner(run, inputs, "cuda")
    return inputs, runners


def probe_key(key: tuple, config: dict | None, sampler: Sampler, idle_s: float, rounds: int,
              emit: Callable[[dict], None], warm_ms: Iterable[float] = ()) -> dict:
    """Every regime on one key; returns the key's ratio line."""
    from tuner.tuning import measure

    inputs, runners = key_runners(key, config)
    rows: dict[tuple[str, str], dict] = {}

    def timed(name: str, warm: float = 0.0) -> dict:
        with sampler:
            us, method = measure.time_runner(runners[name], inputs, "cuda", warm_ms=warm)
        return {"time_us": us, "timing": method, **summarise(sampler.samples),
                **({"nvml_error": sampler.error} if sampler.error else {})}

    for name in runners:  # the search: one timing after the GPU idled (a config compiling)
        time.sleep(idle_s)
        rows[("search", name)] = timed(name)
    for warm in warm_ms:  # the same after the idle, with a warm-up first (its samples include it)
        for name in runners:
            time.sleep(idle_s)
            rows[(f"{WARMED}{warm:g}", name)] = timed(name, warm)
    samples: dict[str, list[dict]] = {n: [] for n in runners}
    names = list(runners)
    for r in range(rounds):  # the finalists' pass: back to back, who goes first rotating
        for name in measure.rotation(names, r):
            samples[name].append(timed(name))
    for name, got in samples.items():
        rows[("sustained", name)] = {"time_us": statistics.median(g["time_us"] for g in got),
                                     "sm_mhz": _median(g.get("sm_mhz") for g in got),
                                     "power_w": _median(g.get("power_w") for g in got),
                                     "temp_c": max((g["temp_c"] for g in got if g.get("temp_c") is not None),
                                                   default=None),
                                     "reasons": sorted({x for g in got for x in g.get("reasons", [])}),
                                     "rounds": [round(g["time_us"], 2) for g in got]}
    for (regime, name), row in rows.items():
        emit({"key": list(key), "regime": regime, "runner": name, "config": config if name == "tuned" else None,
              **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}})
    return ratio_line(key, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuner.benchmarks.clock_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", help="tuner database (path or URL) whose best configs are timed beside cuBLAS")
    p.add_argument("--idle", type=float, default=2.0, help="seconds the GPU idles before a search-like timing")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the sustained pass (the finalists' 5)")
    p.add_argument("--warm-ms", default="250,1000",
                   help="comma-separated warm-ups (ms of GPU work) before a search-like timing, each a regime")
    a = p.parse_args(argv)
    try:
        warm_ms = list(dict.fromkeys(float(w) for w in a.warm_ms.split(",") if w.strip()))  # each once
    except ValueError:
        p.error(f"--warm-ms takes numbers separated by commas, not {a.warm_ms!r}")
    if a.idle < 0 or a.rounds < 1 or not all(0 < w < math.inf for w in warm_ms):
        p.error("--idle must be 0 or more, --rounds 1 or more and every --warm-ms over 0")
    import torch

    if not torch.cuda.is_available():
        p.error("needs an NVIDIA GPU (torch sees no CUDA device)")
    try:
        import pynvml as nvml

        nvml.nvmlInit()
    except Exception as e:  # the driver's NVML library, not only the Python package
        p.error(f"needs NVML to read clocks: {type(e).__name__}: {e}")
    from db import DatabaseUnusable

    try:
        configs = tuned_configs(a.db)
    except DatabaseUnusable as e:
        p.error(str(e))
    sampler = Sampler(nvml_handle(nvml), nvml)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "idle_s": a.idle,
                      "rounds": a.rounds, "warm_ms": warm_ms, "at_rest": summarise([sampler._read()])}), flush=True)
    for key in KEYS:
        line = probe_key(key, configs.get(key), sampler, a.idle, a.rounds,
                         lambda row: print(json.dumps(row), flush=True), warm_ms)
        print(json.dumps({"summary": line}), flush=True)
    nvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
