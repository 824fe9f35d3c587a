"""Refuse tuned results that were measured on another machine or software stack.

A FlagGems cache table name carries no compiler or GPU identity, so a result copied
from elsewhere would be used silently; this is the guard (DESIGN.md, flow 1).
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

# Fields of a record's "environment" that must equal the running process's.
ENV_FIELDS = ("gpu_name", "triton", "flag_gems")


class ForeignResultError(ValueError):
    """A tuned record does not match the running GPU / Triton / FlagGems / kernel source."""


def running_gpu_name() -> str | None:
    """The name FlagGems and vLLM see (torch's CUDA name equals NVML's), None without a GPU.
    NVML first, so `tuner serve` loads no torch before the engine starts; torch only where
    nvidia-ml-py is missing."""
    from tuner.fingerprint import nvml_available, nvml_gpu_name

    if nvml_available():
        return nvml_gpu_name()
    import torch

    try:
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except (RuntimeError, AssertionError) as e:  # a broken driver: no GPU to match against
        logger.warning("cannot read the GPU name: %s", e)
    return None


def running_environment(fields: Iterable[str] = ENV_FIELDS) -> dict[str, str | None]:
    """The running values of `fields` (None where unknown, e.g. no GPU)."""
    from tuner.fingerprint import installed_version

    out: dict[str, str | None] = {}
    for f in fields:
        if f == "gpu_name":
            out[f] = running_gpu_name()
        elif f in ("triton", "flag_gems"):  # the installed versions, as stored results record them (no import)
            out[f] = installed_version(f)
        else:
            raise ValueError(f"unknown environment field {f!r}")
    return out


def mismatches(record: Mapping[str, Any], running: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a record and `running`.

    `running` maps environment fields (and optionally "kernel_source_hash") to the
    running value; an unknown running value (None) counts as a mismatch, because
    then the match cannot be verified.
    """
    env = record.get("environment") or {}
    out = []
    for field, have in running.items():
        want = record.get(field) if field == "kernel_source_hash" else env.get(field)
        if want != have and field == "kernel_source_hash":
            out.append(f"kernel_source_hash: record {str(want)[:12]!r} vs running {str(have)[:12]!r} "
                       "(the kernel's source changed since it was tuned)")
        elif want != have:
            out.append(f"{field}: record {want!r} vs running {have!r}")
    return out


def check_records(
    records: Iterable[Mapping[str, Any]],
    running: Mapping[str, Any] | None = None,
    *,
    allow_foreign: bool = False,
    running_for: Any = None,
) -> list[Mapping[str, Any]]:
    """Return the records, raising ForeignResultError on the first foreign one.

    `running_for(record) -> mapping` gives per-record expectations (e.g. the kernel
    hash of the record's variant) merged over `running`. With allow_foreign=True a
    foreign record is kept and a loud warning is issued instead.
    """
    base = dict(running if running is not None else running_environment())
    kept = []
    for rec in records:
        exp = {**base, **(running_for(rec) if running_for else {})}
        diff = mismatches(rec, exp)
        if diff:
            what = f"{rec.get('kernel')} {rec.get('key')} {rec.get('dtype')}"
            if not allow_foreign:
                raise ForeignResultError(
                    f"Tuned result for {what} was measured elsewhere ({'; '.join(diff)}); "
                    "re-tune on this machine or pass allow_foreign=True to use it anyway."
                )
            msg = f"USING FOREIGN TUNED RESULT for {what}: {'; '.join(diff)}"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        kept.append(rec)
    return kept
