"""The environment fingerprint's torch-free parts: the GPU name from NVML (this host has no NVIDIA
driver: no GPU) and the device's memory."""
import subprocess
import sys
from pathlib import Path

from tuner import fingerprint

REPO = Path(__file__).resolve().parents[2]


def test_memory_of_the_device():
    assert fingerprint.memory_bytes("cpu") > 2**30  # this machine's RAM
    assert fingerprint.memory_bytes("cuda") is None  # no GPU here


def test_gpu_name_from_nvml_loads_no_torch():
    code = ("import sys\nfrom tuner.inject.foreign import running_gpu_name\n"
            "print(running_gpu_name(), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    name, torch_loaded = r.stdout.split()
    assert torch_loaded == "False"
    assert name == (fingerprint.nvml_gpu_name() or "None")
