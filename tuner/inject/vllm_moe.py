"""Export tuned fused-MoE configs as the JSON files vLLM reads from VLLM_TUNED_CONFIG_FOLDER.

Names and content follow vLLM 0.33 `fused_moe.get_config_file_name` / `get_moe_configs`;
tests compare against vLLM's own functions so a renamed scheme is caught.
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


def _file_for(rec: Mapping[str, Any], device_name: str | None) -> str:
    key = rec["key"]
    dev = device_name or (rec.get("environment") or {}).get("gpu_name")
    if not dev:
        raise ValueError("fused_moe record has no environment.gpu_name; pass device_name")
    return config_file_name(int(key["E"]), int(key["N"]), config_dtype(rec["dtype"]), dev,
                            key.get("block_shape"))


def moe_tables(
    records: Iterable[Mapping[str, Any]], device_name: str | None = None
) -> dict[str, dict[int, dict[str, int]]]:
    """file name -> {M: config} for the fused_moe records; conflicting duplicates raise."""
    tables: dict[str, dict[int, dict[str, int]]] = {}
    origin: dict[tuple[str, int], Mapping[str, Any]] = {}
    for rec in records:
        if rec.get("kernel") != "fused_moe":
            continue
        name = _file_for(rec, device_name)
        m = int(rec["key"]["M"])
        cfg = {k: int(v) for k, v in rec["config"].items() if k in _CONFIG_KEYS}
        prev = tables.setdefault(name, {}).get(m)
        if prev is not None and prev != cfg:
            raise ValueError(
                f"two different fused_moe configs for {name} M={m}: "
                f"{origin[name, m]['key']} and {rec['key']}"
            )
        tables[name][m] = cfg
        origin[name, m] = rec
    return tables


def export_moe_configs(
    records: Iterable[Mapping[str, Any]],
    folder: str | Path,
    *,
    device_name: str | None = None,
    allow_foreign: bool = False,
    running: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write one vLLM JSON file per (E, N, dtype, block_shape); return the paths.

    `device_name` is the target GPU's NVML name (default: each record's gpu_name).
    Records are checked against the running GPU/Triton (`running` overrides the
    detected values); vLLM itself checks nothing, so this is the only guard.
    """
    import triton

    recs = [r for r in records if r.get("kernel") == "fused_moe"]
    check_records(recs, running if running is not None else _default_running(),
                  allow_foreign=allow_foreign)
    folder = Path(folder)
    paths = []
    for name, table in sorted(moe_tables(recs, device_name).items()):
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


def check_moe_sources(records: Iterable[Mapping[str, Any]], allow_foreign: bool,
                      source_hash: str | None = None) -> int:
    """Refuse (ForeignResultError) a fused_moe record tuned on another source of the kernel than
    the running one (`source_hash`, default: moe_source_hash()), as the mm injectors do; GPU and
    Triton were checked when the files were written. Returns the number of fused_moe records."""
    recs = [r for r in records if r.get("kernel") == "fused_moe"]
    if recs:
        check_records(recs, {"kernel_source_hash": source_hash or moe_source_hash()}, allow_foreign=allow_foreign)
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
    plugins ran; the files were written with the runtime folder. Counts the fused_moe records.
    Their kernel source is checked in the FlagGems stage (flaggems_moe: this stage runs before
    FlagGems is loaded), still before any MoE layer reads the folder."""
    if os.environ.setdefault("VLLM_TUNED_CONFIG_FOLDER", str(ctx.moe_dir)) != str(ctx.moe_dir):
        ctx.log.warning("VLLM_TUNED_CONFIG_FOLDER=%s overrides the tuned MoE folder %s",
                        os.environ["VLLM_TUNED_CONFIG_FOLDER"], ctx.moe_dir)
    return sum(1 for r in records if r.get("kernel") == "fused_moe")
