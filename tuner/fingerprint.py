"""The environment fingerprint every stored result carries: GPU, driver, and software versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Fingerprint:
    device: str  # "cuda" or "cpu"
    gpu_name: str | None
    sm_count: int | None
    memory_bytes: int | None
    sm_clock_max_mhz: int | None
    mem_clock_max_mhz: int | None
    driver: str | None
    cuda: str | None
    torch: str
    triton: str
    flag_gems: str | None
    vllm: str | None
    python: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]

    def as_dict(self) -> dict:
        return asdict(self)


def installed_version(dist: str) -> str | None:
    """A package's installed version from its metadata (no import); None when not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvml(index: int) -> dict:
    """What NVML says of GPU `index`; empty when there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        return {
            "gpu_name": name.decode() if isinstance(name, bytes) else name,
            "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
            "sm_clock_max_mhz": int(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)),
            "mem_clock_max_mhz": int(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)),
            "driver": str(pynvml.nvmlSystemGetDriverVersion()),
        }
    except Exception:
        return {}
    finally:
        pynvml.nvmlShutdown()


def nvml_available() -> bool:
    """Whether NVML can be asked at all (nvidia-ml-py installed); a machine without a driver
    still answers: no GPU."""
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True


def nvml_gpu_name(index: int = 0) -> str | None:
    """GPU `index`'s name from NVML (the name stored results carry), None without a driver or GPU.
    Loads no torch: `tuner serve` needs the name before the engine starts."""
    return _nvml(index).get("gpu_name")


def memory_bytes(device: str, index: int = 0) -> int | None:
    """Memory of the device a measurement runs on: the GPU's (NVML), or this machine's RAM for
    "cpu"; None when unknown. Loads no torch."""
    if device == "cuda":
        return _nvml(index).get("memory_bytes")
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def collect(device: str, index: int = 0) -> Fingerprint:
    """Fingerprint of this machine for measurements on `device` ("cuda" or "cpu")."""
    import torch

    gpu: dict = {}
    sm_count = None
    if device == "cuda":
        gpu = _nvml(index)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(index)
            sm_count = props.multi_processor_count
            gpu.setdefault("gpu_name", props.name)
            gpu.setdefault("memory_bytes", int(props.total_memory))
    return Fingerprint(
        device=device,
        gpu_name=gpu.get("gpu_name"),
        sm_count=sm_count,
        memory_bytes=gpu.get("memory_bytes"),
        sm_clock_max_mhz=gpu.get("sm_clock_max_mhz"),
        mem_clock_max_mhz=gpu.get("mem_clock_max_mhz"),
        driver=gpu.get("driver"),
        cuda=torch.version.cuda if device == "cuda" else None,
        torch=torch.__version__,
        triton=installed_version("triton") or "none",
        flag_gems=installed_version("flag_gems") or installed_version("flag-gems"),
        vllm=installed_version("vllm"),
        python=platform.python_version(),
    )
