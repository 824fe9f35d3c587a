"""The fold probe's runs compute the same product as torch.bmm on the linear layout (under the
interpreter on a small key: the folded rows are X's, the copy lands in bmm's layout, the batched
kernel walks the products the other way round)."""
import os

import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.bmm import BMM  # noqa: E402
from tuner.benchmarks.bmm_fold_probe import CONFIG, KEYS, folded_rows, runs  # noqa: E402


def test_folded_rows_are_the_sequence_first_inputs_rows():
    x = torch.arange(2 * 5 * 3).reshape(2, 5, 3)  # X [M=2, BATCH=5, K=3]
    a = x.permute(1, 0, 2)
    assert torch.equal(folded_rows(a), x.reshape(10, 3))


def test_runs_agree_with_bmm_on_a_small_linear_key():
    key = (20, 3, 40, 48, 1)
    inputs = BMM().make_inputs(key, "fp16", "cpu", 1, seed=3)
    args, ref = inputs.sets[0], BMM().reference(inputs.sets[0])
    small = CONFIG | dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2)
    for name, run in runs(small, key, "cpu", torch.float16).items():
        out = torch.full((20, 3, 40), float("nan"), dtype=torch.float16)
        got = run(args, out)  # mm_folded_gemm: its own buffer, in X's row order
        result = got.view(3, 20, 40).transpose(0, 1) if name == "mm_folded_gemm" else out
        assert ((result.double() - ref).norm() / ref.norm()).item() < 1e-3, name
    assert all(k[0] == 1024 and k[4] == 1 for k in KEYS)
