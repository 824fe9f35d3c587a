"""On the H100 (`pytest -m gpu`): one MiniCPM-o 2.6 GEMM tuned end to end."""

import pytest
import torch

from db import open_database, queries
from tuner.tuning.flow import TuneRequest, tune

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_tune_minicpmo_qkv_decode_key(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    (res,) = tune(TuneRequest(op="mm", shapes=["16,4608,3584"], trials=12, device="cuda", seed=0, db_url=url))
    o = res.outcome
    assert res.stored and o.timing == "cuda-graph"
    assert set(o.setup.baselines_us) == {"native", "untuned"} and not o.setup.baseline_errors
    # FlagGems' own untuned pick is the warm start, so the best is never worse than it (+noise)
    assert o.best_us <= o.setup.baselines_us["untuned"] * 1.05
    with open_database(url).session() as s:
        (row,) = queries.best_configs(s, kernel="mm")
        assert row.rel_error < 1e-2 and row.native_us > 0 and row.untuned_us > 0
        assert row.environment.gpu_name and row.environment.sm_count > 0
