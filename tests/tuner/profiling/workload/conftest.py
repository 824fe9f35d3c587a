import pytest
import torch

from tuner.profiling.workload import build_model

SCALE = 0.05  # tiny enough for 2 CPU cores, same module structure as the real model


@pytest.fixture(scope="session")
def tiny_model():
    return build_model(SCALE, torch.float32, device="cpu", seed=0)
