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


def test_a_warm_up_runs_before_the_samples_and_is_not_timed():
    from tuner.tuning import measure

    calls = []
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)

    def fn():
        calls.append(1)
        a @ a

    fn()  # compiled and warm: the cold sample's first call must not be a slow one
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one_ms = start.elapsed_time(end)
    calls.clear()
    cold = measure._sample(fn, 1)
    n_cold = len(calls)
    calls.clear()
    warm = measure._sample(fn, 1, warm_ms=50.0)
    # the warm-up's calls (50 ms of them) come on top of the sampled ones, and the reported time
    # stays a time of one call, not of the warm-up
    assert len(calls) - n_cold >= 0.3 * 50.0 / one_ms
    assert 0.3 < warm / cold < 3
