"""The descriptor probe times configs the search could pick: each case's config is valid for its
key on both descriptor forms (the kernels' equality is tests/kernels/test_persistent_host_mm.py)."""

from kernels import get_kernel
from kernels.mm import PERSISTENT_PINNED
from tuner.benchmarks.desc_probe import CASES


def test_every_case_is_a_valid_config_on_both_descriptor_forms():
    for (M, N, K), has_bias, config in CASES:
        kernel = get_kernel("addmm" if has_bias else "mm")
        key = (M, N, K, 1)
        for host in (0, 1):
            if has_bias:
                c = {"variant": "persistent", "BLOCK_SIZE_M": config["BLOCK_M"], "BLOCK_SIZE_N": config["BLOCK_N"],
                     "BLOCK_SIZE_K": config["BLOCK_K"],
                     **{k: v for k, v in config.items() if not k.startswith("BLOCK")}}
            else:
                c = {"variant": "persistent", **config}
            c = kernel.canonical(key, PERSISTENT_PINNED | c | {"HOST_DESC": host})
            assert kernel.invalid_reason(key, c, "bf16", "cuda") is None, (key, c)
