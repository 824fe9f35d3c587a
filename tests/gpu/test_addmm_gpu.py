"""On the H100 (`pytest -m gpu tests/gpu/test_addmm_gpu.py`): FlagGems' addmm tuned and injected.

Each test runs in a fresh interpreter (FlagGems cannot run under TRITON_INTERPRET=1, which the
CPU mm tests set in this process), with its own FlagGems cache database.
"""

from kernels.addmm import VARIANT
from tests.conftest import result, run_py
from tests.gpu.flaggems_libtuner import ON_GPU, check_runner_is_flaggems, gpu_env, seeded, tune_one_key

pytestmark = ON_GPU


def test_runner_is_flaggems_addmm_bit_for_bit(tmp_path):
    """The runner launches FlagGems' own JIT function: with the same config (seeded into its
    LibTuner so flag_gems' addmm uses it) both outputs are identical, for every listed config
    and an off-list one, both weight layouts, and a partial tile."""
    off = [{"variant": VARIANT, "BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "num_warps": 4,
            "num_stages": 3}]
    check_runner_is_flaggems(tmp_path, "addmm", keys=[(16, 512, 3584, 1), (300, 4304, 1152, 1), (37, 1152, 4304, 0)],
                             off=off, unpack="M, N, K, _", cache_key='addmm_key(t, N, K, "bf16", M)', min_rows=20)


def test_tune_minicpmo_kv_decode_key(tmp_path):
    # FlagGems' addmm or one of tuner's own kernels (split-K won this decode key on the H200 once
    # they joined the space: the test said fg_addmm and failed, results/gemm_h200/session5)
    tune_one_key(tmp_path, "addmm", "16,512,3584", trials=10, variants=("fg_addmm", "splitk", "persistent", "streamk"))


def test_seeded_addmm_runs_without_autotuning(tmp_path):
    """Seeded keys are hits for real F.linear calls with a bias (no benchmark), listed and
    off-list configs alike."""
    records = [({"M": M, "N": 512, "K": 3584, "BT": 1},
                {"variant": "fg_addmm", "BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": bk,
                 "num_warps": 4, "num_stages": 3})
               for M, bm, bk in [(1, 16, 128), (256, 64, 64)]]  # both off FlagGems' list
    r = result(run_py(seeded("addmm", records, max_tokens=512) + """
import torch.nn.functional as F
w = torch.randn(512, 3584, device="cuda", dtype=torch.bfloat16)
b = torch.randn(512, device="cuda", dtype=torch.bfloat16)
got = {}
xs = {M: torch.randn(M, 3584, device="cuda", dtype=torch.bfloat16) for M in (1, 7, 300)}
ys = {}
# only the call under test runs with FlagGems: every other op it replaces (the reference's fp32
# mm, assert_close's reductions) would autotune on its first call, for tens of seconds each
with flag_gems.use_gems():
    for M, x in xs.items():
        t.best_config = None
        ys[M] = F.linear(x, w, b)
        got[M] = t.best_config.kwargs["BLOCK_SIZE_M"] if t.best_config is not None else None
for M, x in xs.items():
    torch.testing.assert_close(ys[M].float(), x.float() @ w.float().t() + b.float(), atol=0.5, rtol=2e-2)
print("RESULT", json.dumps({"n_configs": len(t.configs), "rows": list(report.rows.values()), "got": got}))
""", gpu_env(tmp_path), timeout=600))
    assert r["n_configs"] == 8 and r["rows"] == [16]  # no pre_hook: nothing appended; 512 / 32 keys
    assert r["got"] == {"1": 16, "7": 16, "300": 64}
