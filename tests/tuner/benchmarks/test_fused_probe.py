"""The fused split-K probe's cases (GPU-only timing) are valid configs of the keys they run on,
for both reductions, so a lease is not spent on a refused or wrong config."""

from kernels import get_kernel
from tuner.benchmarks.fused_probe import CASES


def test_every_case_is_a_valid_split_k_config_of_its_key_both_ways():
    mm = get_kernel("mm")
    layers = set()
    for layer, (M, N, K), has_bias, config in CASES:
        layers.add(layer)
        assert has_bias == (layer == "qkv")  # the q/k/v projection carries the bias (addmm)
        assert config["SPLIT_K"] > 1  # otherwise there is nothing to fuse
        for fused in (0, 1):
            cfg = {"variant": "splitk", **config, "FUSED_REDUCE": fused}
            assert mm.invalid_reason((M, N, K, 1), cfg, "bf16", "cuda") is None, (layer, M, cfg)
            assert mm.canonical((M, N, K, 1), cfg) == cfg
    assert layers == {"o", "qkv", "down"}
