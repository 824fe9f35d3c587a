"""On the H100 (`pytest -m gpu tests/gpu/test_bmm_gpu.py`): FlagGems' bmm tuned and injected.

Each test runs in a fresh interpreter (FlagGems cannot run under TRITON_INTERPRET=1, which the
CPU mm tests set in this process), with its own FlagGems cache database.
"""

from kernels.bmm import VARIANT
from tests.conftest import result, run_py
from tests.gpu.flaggems_libtuner import ON_GPU, check_runner_is_flaggems, gpu_env, seeded, tune_one_key

pytestmark = ON_GPU


def test_runner_is_flaggems_bmm_bit_for_bit(tmp_path):
    """The runner launches FlagGems' own JIT function with the heuristics' DIVISIBLE flags: with
    the same config seeded into its LibTuner, flag_gems' bmm gives identical outputs, for every
    listed config and two off-list ones, both layouts, and partial tiles."""
    off = [{"variant": VARIANT, "TILE_M": 16, "TILE_N": 64, "TILE_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 3},
           {"variant": VARIANT, "TILE_M": 64, "TILE_N": 128, "TILE_K": 64, "GROUP_M": 4, "num_warps": 8, "num_stages": 4}]
    check_runner_is_flaggems(tmp_path, "bmm", keys=[(1024, 10, 3584, 3584, 1), (40, 37, 200, 72, 0), (3, 64, 1024, 128, 0)],
                             off=off, unpack="B, M, N, K, layout", cache_key='bmm_key(t, B, N, K, layout, "bf16", M)',
                             min_rows=30)


def test_tune_resampler_key(tmp_path):
    rec = tune_one_key(tmp_path, "bmm", "1024,10,3584,3584,linear", trials=8, variants=("fg_bmm", "persistent"))
    assert rec["key"] == {"BATCH": 1024, "M": 10, "N": 3584, "K": 3584, "LAYOUT": 1}


def test_seeded_bmm_runs_without_autotuning(tmp_path):
    """A seeded resampler key is a hit for the real nn.MultiheadAttention call (F.linear on a
    sequence-first input reaches bmm with the linear layout): no benchmark, the seeded tile.
    Only the MHA call runs under FlagGems (its other ops would autotune on first use)."""
    records = [({"BATCH": 1024, "M": M, "N": 3584, "K": 3584, "LAYOUT": 1},
                {"variant": "fg_bmm", "TILE_M": tm, "TILE_N": 128, "TILE_K": 64, "GROUP_M": 1,
                 "num_warps": 4, "num_stages": 3})
               for M, tm in [(1, 16), (10, 32)]]  # both off FlagGems' list
    r = result(run_py(seeded("bmm", records, max_tokens=64) + """
# weights that do not require grad, as in serving (vLLM's, the workload's): with requires_grad
# torch.matmul folds the input into one mm with a copy instead of calling bmm
mha = torch.nn.MultiheadAttention(3584, 28, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
got, inputs = {}, {}
for slices in (1, 2, 10):
    q = torch.randn(64, slices, 3584, device="cuda", dtype=torch.bfloat16)
    # k and v distinct, as in the resampler (one object would take the packed [2E, E] path)
    k, v = (torch.randn(slices, 1024, 3584, device="cuda", dtype=torch.bfloat16).permute(1, 0, 2)
            for _ in range(2))
    inputs[slices] = (q, k, v)
with flag_gems.use_gems(exclude=["layer_norm", "mul"]), torch.no_grad():
    for slices, (q, k, v) in inputs.items():
        t.best_config = None
        mha(q, k, v, need_weights=False)
        got[slices] = t.best_config.kwargs["TILE_M"] if t.best_config is not None else None
print("RESULT", json.dumps({"rows": list(report.rows.values()), "got": got}))
""", gpu_env(tmp_path), timeout=600))
    assert r["rows"] == [7]  # log2 buckets of M in 1..64
    # one slice: matmul views the input as 2-D and calls mm, no bmm at all; two slices take the
    # config tuned at M=1 (nearer in log space than 10)
    assert r["got"] == {"1": None, "2": 16, "10": 32}
