"""Per-variant bests: on hand-made trials in a real SQLite study (its arithmetic and what it leaves
out) and on a real `tuner tune` run on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tuner.benchmarks.variant_bests import markdown, variant_bests


def _trial(value, variant, block, status="ok", duplicate=False, state=TrialState.COMPLETE):
    attrs = {"canonical": json.dumps({"variant": variant, "BLOCK_M": block}), "status": status}
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None, params={"x": 0},
                        distributions={"x": CategoricalDistribution([0])},
                        user_attrs=attrs | ({"duplicate": True} if duplicate else {}))


def test_each_variants_best_over_the_keys_best(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    study = optuna.create_study(study_name="mm|M=8,N=64,K=32,BT=1|bf16|fp|src=a", storage=url)
    for t in [_trial(10.0, "persistent", 16), _trial(12.5, "persistent", 32), _trial(8.0, "splitk", 16),
              _trial(4.0, "splitk", 32, duplicate=True),  # told a repeat's time: not a measurement
              _trial(None, "streamk", 16, "failed", state=TrialState.FAIL),
              _trial(2.0, "streamk", 32, "wrong")]:  # ran, wrong result: not a time
        study.add_trial(t)
    other = optuna.create_study(study_name="bmm|B=2,M=8,N=64,K=32|bf16|fp|src=a", storage=url)
    other.add_trial(_trial(1.0, "fg", 16))
    optuna.create_study(study_name="not-tuners", storage=url).add_trial(_trial(1.0, "fg", 16))
    (row,) = variant_bests(url, ["mm", "addmm"])
    assert row["key"] == "M=8,N=64,K=32,BT=1" and row["best_us"] == 8.0
    assert row["variants"] == {"persistent": (1.25, 2), "splitk": (1.0, 1)}
    text = markdown([row])
    assert "| mm | M=8,N=64,K=32,BT=1 bf16 | 8.0 | 1.25 (2) | 1.00 (1) |" in text
    assert "- splitk: best of 1 of 1 studies" in text and "streamk" not in text
    # the same key under a changed kernel source: both rows, told apart by their hash
    new = optuna.create_study(study_name="mm|M=8,N=64,K=32,BT=1|bf16|fp|src=b", storage=url)
    new.add_trial(_trial(9.0, "splitk", 16))
    assert [r["label"] for r in variant_bests(url, ["mm"])] == ["M=8,N=64,K=32,BT=1 bf16 src=a",
                                                               "M=8,N=64,K=32,BT=1 bf16 src=b"]


def test_a_real_cpu_tune(tmp_path):
    repo = Path(__file__).resolve().parents[3]
    db = tmp_path / "t.db"
    cmd = [sys.executable, str(repo / "cli.py"), "tune", "--op", "mm", "--shape", "16,32,32", "--device", "cpu",
           "--db", f"sqlite:///{db}", "--trials", "6", "--seed", "0"]
    p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    (row,) = variant_bests(f"sqlite:///{db}", ["mm"])
    from kernels import get_kernel

    # against the study the tune wrote, read without this module: its smallest measured time, and
    # only variants of the op's space on this device
    study = optuna.load_study(study_name=row["study"], storage=f"sqlite:///{db}")
    assert row["best_us"] == min(t.value for t in study.trials if t.value is not None and not
                                 t.user_attrs.get("duplicate") and t.user_attrs.get("status") == "ok")
    assert set(row["variants"]) <= set(get_kernel("mm").space((16, 32, 32), "bf16", "cpu")["variant"])
    assert 1 <= sum(n for _, n in row["variants"].values()) <= 6
