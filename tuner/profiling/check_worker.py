"""One op's consistency check, in its own process: `python -m tuner.profiling.check_worker FILE --out JSONL`.

For each recorded input set from --start on: write {"start": i}, compute the native result on a
fresh copy of the inputs, then the candidate's on another fresh copy, compare (outputs and every
tensor argument afterwards, so in-place and out= ops are covered), write {"result": ...}.
A CUDA error leaves the context unusable: the result is written as a crash and the process exits,
and the harness starts a new one for the remaining inputs. Dying outright is what the harness
detects itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import torch
from torch.utils._pytree import tree_map

from tuner.profiling.check import compare, resolve_op


def _to(device: str):
    def move(x):
        if isinstance(x, torch.Tensor):
            # keep strides: copy the storage span, view it the same way
            if x.numel() == 0:
                return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=device)
            extent = 1 + sum((s - 1) * st for s, st in zip(x.shape, x.stride()) if s > 0)
            flat = x.as_strided((extent,), (1,), x.storage_offset()).to(device, copy=True)
            return flat.as_strided(x.shape, x.stride(), 0)
        if isinstance(x, torch.device):
            return torch.device(device)
        return x
    return move


def _kwargs_device(kwargs: dict, device: str) -> dict:
    # factory ops (zeros, arange, ...) recorded on the capture device run on the check device
    return {k: (torch.device(device) if k == "device" and v is not None else v) for k, v in kwargs.items()}


def _is_cuda_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return any(s in text for s in ("CUDA", "cuda", "illegal memory", "Triton Error", "AcceleratorError"))


def load_candidate(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def candidate_reason(spec: str) -> str | None:
    """Why `spec` cannot be the check's candidate, or None: asked once before the workload runs.
    Found in each op's subprocess, a misspelt one crashed every op (43 of them, 2 min 43 s on the
    CPU host) and stored an exclude list of 16 ops."""
    module, sep, name = spec.partition(":")
    if not (sep and module and name):
        return f"--candidate {spec!r} must be module:function"
    try:
        fn = load_candidate(spec)
    except ImportError as e:
        return f"--candidate {spec!r}: cannot import {module} ({e})"
    except AttributeError:
        return f"--candidate {spec!r}: {module} has no {name}"
    return None if callable(fn) else f"--candidate {spec!r}: {module}.{name} is not a function"


def flaggems_candidate(func, args, kwargs, op_key):
    """The op with only FlagGems' implementation of it enabled (`flag_gems.use_gems(include=...)`)."""
    fn = gems_function(op_key)
    with flag_gems().use_gems(include=[fn]):
        out = func(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # surface asynchronous faults here, not later
    return out


_FG = None


def flag_gems():
    global _FG
    if _FG is None:
        import flag_gems as fg

        _FG = fg
    return _FG


def gems_function(op_key: str) -> str:
    """The function name FlagGems registered for `op_key` (what enable(unused=) / include take)."""
    for item in flag_gems()._FULL_CONFIG:
        if item[0] == op_key:
            return item[1].__name__
    raise KeyError(f"FlagGems registers no implementation for aten::{op_key}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--out", required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--candidate", required=True)
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)

    data = torch.load(a.file, weights_only=False)
    func = resolve_op(data["qualname"])
    out = open(a.out, "a", buffering=1)

    def emit(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()
        os.fsync(out.fileno())

    candidate = load_candidate(a.candidate)
    if a.candidate.endswith(":flaggems_candidate"):
        emit({"gems_fn": gems_function(data["op"])})
    move = _to(a.device)
    for i in range(a.start, len(data["variants"])):
        v = data["variants"][i]
        emit({"start": i})
        result = {"index": i}
        try:
            n_args, n_kwargs = tree_map(move, v["args"]), _kwargs_device(tree_map(move, v["kwargs"]), a.device)
            native = func(*n_args, **n_kwargs)
            native_all = (native, n_args, n_kwargs)
        except Exception as e:
            result |= {"status": "skipped", "detail": f"the native op fails on these inputs: {type(e).__name__}: {e}"[:500]}
            emit({"result": result})
            continue
        try:
            c_args, c_kwargs = tree_map(move, v["args"]), _kwargs_device(tree_map(move, v["kwargs"]), a.device)
            cand = candidate(func, c_args, c_kwargs, data["op"])
            cand_all = (cand, c_args, c_kwargs)
        except Exception as e:
            result |= {"status": "crash", "detail": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
            emit({"result": result})
            if _is_cuda_error(e):
                out.close()
                os._exit(3)  # the CUDA context is gone; a fresh process takes the rest
            continue
        status, max_abs, rel, detail = compare(native_all, cand_all)
        result |= {"status": status, "max_abs_error": max_abs, "rel_error": rel, "detail": detail}
        emit({"result": result})
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
