"""tuner/devices.py: the one dtype-name table and the one device resolution."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tuner import devices
from tuner.errors import UserError


@pytest.mark.parametrize("name, expected", [
    ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
    ("fp16", torch.float16), ("float16", torch.float16),
    ("fp32", torch.float32), ("float32", torch.float32),
])
def test_torch_dtype_takes_tuner_and_torch_names(name, expected):
    assert devices.torch_dtype(name) is expected


@pytest.mark.parametrize("name", ["fp8_w8a8", "float64", "BF16", "half", ""])
def test_torch_dtype_refuses_other_names(name):
    with pytest.raises(KeyError):
        devices.torch_dtype(name)


def test_tables_agree():
    assert devices.DTYPES == ("bf16", "fp16", "fp32")
    assert set(devices.TORCH_NAMES) == set(devices.ELEM_BYTES) == set(devices.DTYPES)
    assert devices.DTYPE_ALIASES == {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
                                     "fp32": "fp32", "float32": "fp32"}
    for short, size in devices.ELEM_BYTES.items():
        assert devices.torch_dtype(short).itemsize == size


def test_kernel_dtype_keeps_short_names_only_and_its_message():
    from kernels.base import KernelInputError, torch_dtype

    assert torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(KernelInputError, match=r"unknown dtype 'bfloat16'; use one of bf16, fp16, fp32"):
        torch_dtype("bfloat16")


def test_resolve_device_names(monkeypatch):
    with pytest.raises(UserError, match=r"unknown device 'tpu'; use cuda, cpu or auto"):
        devices.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto", interpreter=False) == "cpu"
    with pytest.raises(UserError, match="--device cuda needs an NVIDIA GPU, and none is visible"):
        devices.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == "cuda"
    assert devices.resolve_device("cuda") == "cuda"


def test_resolve_device_sets_the_interpreter_for_cpu_only_when_asked(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # restored afterwards, whatever it was
    monkeypatch.delenv("TRITON_INTERPRET")
    assert devices.resolve_device("cpu", interpreter=False) == "cpu"
    assert "TRITON_INTERPRET" not in os.environ
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("cuda") == "cuda"
    assert "TRITON_INTERPRET" not in os.environ
    assert devices.resolve_device("cpu") == "cpu"
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_importing_devices_does_not_import_torch():
    code = "import sys, tuner.devices, kernels.base; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
