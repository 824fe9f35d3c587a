"""A kernel whose configs misbehave on purpose, to exercise the real worker's failure handling:
one raises, one kills its process, one returns wrong numbers, one hangs. The worker imports it
by reference ("tests.tuner.tuning.faulty_kernel:Faulty"), as it imports any kernel module."""

import os
import time

import torch

from kernels.base import Inputs, Kernel


class Faulty(Kernel):
    name = "faulty"
    key_names = ("N",)

    def space(self, key, dtype, device):
        return {"variant": ("good", "raises", "dies", "wrong", "hangs"), "scale": (1, 2, 3)}

    def invalid_reason(self, key, config, dtype, device, arch=9):
        return None

    def make_inputs(self, key, dtype, device, n_sets, seed):
        g = torch.Generator().manual_seed(seed)
        sets = [(torch.randn(key[0], key[0], generator=g),) for _ in range(n_sets)]
        return Inputs(sets=sets, outs=[torch.empty(key[0], key[0]) for _ in range(n_sets)])

    def bytes_per_set(self, key, dtype):
        return key[0] * key[0] * 4

    def reference(self, args):
        return args[0].double() @ args[0].double()

    def runner(self, key, config, dtype, device):
        v = config["variant"]

        def run(args, out):
            if v == "raises":
                raise RuntimeError("this config cannot run")
            if v == "dies":
                os._exit(7)
            if v == "hangs":
                time.sleep(3600)
            torch.mm(args[0], args[0], out=out)
            if v == "wrong":
                out.add_(1.0)
            time.sleep(0.001 * config["scale"])  # a measurable, config-dependent cost
            return out

        return run

    def precompile(self, key, config, dtype, device):
        """Compile-ahead (tuner.tuning.compile_pool) of the hanging variant hangs too."""
        if config["variant"] == "hangs":
            time.sleep(3600)

    def baselines(self, key, dtype, device):
        return {"native": lambda args, out: torch.mm(args[0], args[0], out=out)}
