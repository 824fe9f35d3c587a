"""Counts of a Triton kernel's launches: two paths that give the same bits (split-K's reduction
fused or not, host- or device-built descriptors) are told apart only by which kernel ran."""

from types import ModuleType


def count_launches(monkeypatch, kernels: dict[str, tuple[ModuleType, str]]) -> dict[str, int]:
    """Replace each `module.attr` kernel (or its DirectLaunch) by a spy that counts `kernel[grid]`
    launches under its name; returns the live counts."""
    counts = {name: 0 for name in kernels}

    class Spy:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            counts[self.name] += 1
            return self.kernel[grid]

    for name, (module, attr) in kernels.items():
        monkeypatch.setattr(module, attr, Spy(getattr(module, attr), name))
    return counts
