"""Candidate implementations for testing the consistency harness on CPU (`tuner check --candidate`).

These are not stand-ins for FlagGems: they are real, deliberately chosen implementations that
exercise each outcome of the harness (pass, mismatch, crash by dying, crash by raising a CUDA
error, hang) with real torch ops, real subprocesses and real recorded inputs.
"""

from __future__ import annotations

import os
import time

import torch
from torch.utils._pytree import tree_flatten, tree_map


def float64_reference(func, args, kwargs, op_key):
    """The op computed in float64 and rounded back: a correct, differently-rounded implementation."""
    def up(x):
        return x.to(torch.float64) if isinstance(x, torch.Tensor) and x.dtype.is_floating_point else x
    up_args, up_kwargs = tree_map(up, args), tree_map(up, kwargs)
    out = func(*up_args, **up_kwargs)
    # in-place / out= ops wrote into the float64 copies: write back into the caller's tensors
    for orig, new in zip(args, up_args):
        if isinstance(orig, torch.Tensor) and new is not orig and orig.dtype.is_floating_point:
            orig.copy_(new)
    leaves, _ = tree_flatten((args, kwargs))
    first = next((a.dtype for a in leaves if isinstance(a, torch.Tensor) and a.dtype.is_floating_point), None)

    def down(x):
        if isinstance(x, torch.Tensor) and x.dtype == torch.float64 and first is not None:
            return x.to(first)
        return x
    return tree_map(down, out)


def wrong_add(func, args, kwargs, op_key):
    """Correct except that additions come out 5% too large."""
    out = float64_reference(func, args, kwargs, op_key)
    return out * 1.05 if op_key.split(".")[0] in ("add", "add_") else out


def dies_on_mm(func, args, kwargs, op_key):
    """The process dies (as after a fault) on matrix products; correct otherwise."""
    if op_key in ("mm", "addmm", "bmm"):
        os._exit(7)
    return float64_reference(func, args, kwargs, op_key)


def cuda_error_on_mul(func, args, kwargs, op_key):
    """Raises the error a faulting kernel raises, on multiplications."""
    if op_key.startswith("mul"):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return float64_reference(func, args, kwargs, op_key)


def hangs(func, args, kwargs, op_key):
    time.sleep(3600)
