"""On the GPU (`pytest -m gpu`): clock_probe's NVML handle is torch's device and its sampler reads
a clock the device can run at while a GEMM loop keeps it busy."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def test_the_sampler_reads_torchs_device_while_it_works():
    pynvml = pytest.importorskip("pynvml")
    from tuner.benchmarks import clock_probe as cp

    pynvml.nvmlInit()
    try:
        handle = cp.nvml_handle(pynvml)
        name = pynvml.nvmlDeviceGetName(handle)
        assert (name.decode() if isinstance(name, bytes) else name) in torch.cuda.get_device_name()
        top = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        sampler = cp.Sampler(handle, pynvml)
        with sampler:
            for _ in range(200):
                a @ a
            torch.cuda.synchronize()
        s = cp.summarise(sampler.samples)
        assert s["samples"] >= 3
        assert 200 <= s["sm_mhz"] <= top and s["power_w"] > 0
    finally:
        pynvml.nvmlShutdown()
