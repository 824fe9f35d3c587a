"""Export tuned fused-MoE configs as the JSON files vLLM reads from VLLM_TUNED_CONFIG_FOLDER.

Names and content follow vLLM 0.33 `fused_moe.get_config_file_name` / `get_moe_configs`;
tests compare against vLLM's own functions so a renamed scheme is caught.

Which records become which files: a config is evidence only for the kernel it was timed in.
vLLM's folder is read by vLLM's own fused_moe_kernel, which is what serves a MoE model in vLLM
(FlagGems registers no MoE op there), so only `vllm_fused_moe` records (timed in that kernel,
kernels/vllm_fused_moe.py) are written to it. `fused_moe` records (timed in FlagGems' port) go to
the FLAGGEMS_SUBFOLDER beside them, which only FlagGems' hook reads (vLLM looks up
`<folder>/<name>`, never a subfolder), for where FlagGems' MoE serves.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tuner.devices import DTYPE_ALIASES
from tuner.inject import _atomic
from tuner.inject.foreign import check_records
from tuner.inject.registry import ENGINE, Context, injector

# record dtype -> vLLM's `_get_config_dtype_str` (bf16/fp16 configs carry no dtype part).
_DTYPE = {
    **{name: ("float32" if short == "fp32" else None) for name, short in DTYPE_ALIASES.items()},
    "fp8_w8a8": "fp8_w8a8", "fp8_w8a16": "fp8_w8a16",
    "int8_w8a16": "int8_w8a16", "int4_w4a16": "int4_w4a16",
}
# Keys of a config entry that vLLM's/FlagGems' kernel launchers accept.
_CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M",
                "num_warps", "num_stages")
VLLM_OP = "vllm_fused_moe"  # timed in vLLM's kernel: vLLM's folder
FLAGGEMS_OP = "fused_moe"  # timed in FlagGems' kernel: FLAGGEMS_SUBFOLDER, for FlagGems' hook
FLAGGEMS_SUBFOLDER = "flaggems"
FILE_RE = re.compile(
    r"^E=(?P<E>\d+),N=(?P<N>\d+),device_name=(?P<device>[^,]+)"
    r"(?:,dtype=(?P<dtype>[^,]+))?(?:,block_shape=\[(?P<bn>\d+),(?P<bk>\d+)\])?\.json$"
)


def config_dtype(dtype: str) -> str | None:
    """vLLM's dtype selector for a record dtype."""
    try:
        return _DTYPE[dtype]
    except KeyError:
        raise ValueError(f"unsupported fused_moe dtype {dtype!r}; known: {sorted(_DTYPE)}") from None


def device_file_name(device_name: str) -> str:
    """vLLM's `get_device_name_as_file_name` plus its H200-family rule."""
    name = re.sub(r"[\s/]+", "_", device_name)
    return "NVIDIA_H200" if "H200" in name.split("_") else name


def config_file_name(
    E: int, N: int, dtype: str | None, device_name: str, block_shape: list[int] | None = None
) -> str:
    """Same string as vLLM 0.33 `get_config_file_name(E, N, dtype, block_shape)` on `device_name`.

    `dtype` is vLLM's selector (None for bf16/fp16), `N` the per-partition intermediate
    size (`E, _, N = w2.shape`).
    """
    dev = device_file_name(device_name)
    dsel = "" if not dtype else f",dtype={dtype}"
    bsel = ("" if not block_shape or not all(block_shape) else f",block_shape={block_shape}").replace(" ", "")
    return f"E={E},N={N},device_name={dev}{dsel}{bsel}.json"


def _file_for(rec: Mapping[str, Any], device_name: str | None) -> tuple[str, str]:
    key = rec["key"]
    dev = device_name or (rec.get("environment") or {}).get("gpu_name")
    if not dev:
        raise ValueError("fused_moe record has no environment.gpu_name; pass device_name")
    return config_file_name(int(key["E"]), int(key["N"]), config_dtype(rec["dtype"]), dev,
                            key.get("block_shape")), dev


def moe_tables(
    records: Iterable[Mapping[str, Any]], device_name: str | None = None, op: str = VLLM_OP
) -> dict[str, dict[int, dict[str, int]]]:
    """file name -> {M: config} for the records of `op`; conflicting duplicates raise."""
    return {name: table for name, (_, table) in _files(records, device_name, op).items()}


def _files(records: Iterable[Mapping[str, Any]], device_name: str | None, op: str) -> dict[str, tuple[dict, dict]]:
    """file name -> (its shape: E, N, K, top_k, dtype, device; {M: config}) for `op`'s records."""
    files: dict[str, tuple[dict, dict[int, dict[str, int]]]] = {}
    origin: dict[tuple[str, int], Mapping[str, Any]] = {}
    for rec in records:
        if rec.get("kernel") != op:
            continue
        name, dev = _file_for(rec, device_name)
        key = rec["key"]
        shape = {"E": int(key["E"]), "N": int(key["N"]), "K": int(key["K"]), "top_k": int(key["top_k"]),
                 "dtype": rec["dtype"], "device": dev}
        m = int(key["M"])
        cfg = {k: int(v) for k, v in rec["config"].items() if k in _CONFIG_KEYS}
        known, table = files.setdefault(name, (shape, {}))
        if known != shape:  # one file serves one (K, top_k): vLLM's name carries neither
            raise ValueError(f"{name} would hold configs of two shapes: {known} and {shape}")
        prev = table.get(m)
        if prev is not None and prev != cfg:
            raise ValueError(
                f"two different {op} configs for {name} M={m}: "
                f"{origin[name, m]['key']} and {rec['key']}"
            )
        table[m] = cfg
        origin[name, m] = rec
    return files


def export_moe_configs(
    records: Iterable[Mapping[str, Any]],
    folder: str | Path,
    *,
    op: str = VLLM_OP,
    device_name: str | None = None,
    allow_foreign: bool = False,
    running: Mapping[str, Any] | None = None,
    max_tokens: int | None = None,
) -> list[Path]:
    """Write one vLLM JSON file per (E, N, dtype, block_shape) of `op`'s records; return the paths.

    `device_name` is the target GPU's NVML name (default: each record's gpu_name).
    Records are checked against the running GPU/Triton (`running` overrides the
    detected values); vLLM itself checks nothing, so this is the only guard.
    With `max_tokens` (vLLM's max_num_batched_tokens), a file of vLLM's kernel holds the keys
    that give every M up to it its tuned config, or vLLM's own where no tuned M is near
    (kernels.vllm_fused_moe.batch_table); without, the tuned M only.
    """
    import triton

    recs = [r for r in records if r.get("kernel") == op]
    check_records(recs, running if running is not None else _default_running(),
                  allow_foreign=allow_foreign)
    folder = Path(folder)
    paths = []
    for name, (shape, table) in sorted(_files(recs, device_name, op).items()):
        if max_tokens and op == VLLM_OP:
            from kernels.vllm_fused_moe import batch_table, vllm_picker

            pick = vllm_picker(shape["E"], shape["N"], shape["K"], shape["top_k"], shape["device"], shape["dtype"])
            table = batch_table(table, max_tokens, pick)
        content: dict[str, Any] = {str(m): table[m] for m in sorted(table)}
        content["triton_version"] = triton.__version__
        path = folder / name
        _atomic.write_json(path, content)
        paths.append(path)
    return paths


def _default_running() -> dict[str, Any]:
    from tuner.inject.foreign import running_environment

    return running_environment(("gpu_name", "triton"))


def moe_source_hash() -> str:
    """The `kernel_source_hash` a fused_moe record carries: FlagGems' fused_moe_kernel source, the
    kernel the configs were tuned on (kernels/fused_moe.py stores it). Needs flag_gems loaded."""
    from kernels.fused_moe import FusedMoE

    return FusedMoE().source_hash()


def vllm_moe_source_hash() -> str:
    """The `kernel_source_hash` a vllm_fused_moe record carries: vLLM's fused_moe_kernel source,
    read from the installed vllm's file (kernels/vllm_fused_moe.py stores it)."""
    from kernels.vllm_fused_moe import vllm_kernel_source_hash

    return vllm_kernel_source_hash()


def check_moe_sources(records: Iterable[Mapping[str, Any]], allow_foreign: bool,
                      source_hash: str | None = None, op: str = FLAGGEMS_OP) -> int:
    """Refuse (ForeignResultError) an `op` record tuned on another source of its kernel than the
    running one (`source_hash`, default: that of FlagGems' kernel for fused_moe, of vLLM's for
    vllm_fused_moe), as the mm injectors do; GPU and Triton were checked when the files were
    written. Returns the number of `op` records."""
    recs = [r for r in records if r.get("kernel") == op]
    if recs:
        running = source_hash or (vllm_moe_source_hash() if op == VLLM_OP else moe_source_hash())
        check_records(recs, {"kernel_source_hash": running}, allow_foreign=allow_foreign)
    return len(recs)


def load_moe_folder(folder: str | Path) -> dict[tuple, dict[int, dict[str, int]]]:
    """Read exported files back: (E, N, dtype|None, device, block_shape|None) -> {M: config}."""
    import json

    out = {}
    for p in sorted(Path(folder).glob("E=*.json")):
        m = FILE_RE.match(p.name)
        if not m:
            continue
        data = json.loads(p.read_text())
        data.pop("triton_version", None)
        bs = (int(m["bn"]), int(m["bk"])) if m["bn"] else None
        out[(int(m["E"]), int(m["N"]), m["dtype"], m["device"], bs)] = {
            int(k): v for k, v in data.items()
        }
    return out


@injector("fused_moe", label="fused_moe", stage=ENGINE)
def point_vllm_at_moe_folder(records: list[dict[str, Any]], ctx: Context) -> int:
    """vLLM reads VLLM_TUNED_CONFIG_FOLDER when a MoE layer first asks for its config, i.e. after
    plugins ran; the files were written with the runtime folder. Counts the vllm_fused_moe records
    (the files' content), once none was tuned on another source of vLLM's fused_moe_kernel than the
    installed one (ForeignResultError, or a loud warning with allow_foreign). FlagGems-timed
    records are the FlagGems stage's (flaggems_moe)."""
    count = check_moe_sources(records, ctx.allow_foreign, op=VLLM_OP)
    if os.environ.setdefault("VLLM_TUNED_CONFIG_FOLDER", str(ctx.moe_dir)) != str(ctx.moe_dir):
        ctx.log.warning("VLLM_TUNED_CONFIG_FOLDER=%s overrides the tuned MoE folder %s",
                        os.environ["VLLM_TUNED_CONFIG_FOLDER"], ctx.moe_dir)
    return count
