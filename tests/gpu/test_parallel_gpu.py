"""On a GPU host (`pytest -m gpu`): `tuner tune --gpus` refuses an index the machine does not have
(one sentence, exit 2, nothing written), and `--gpus 0 --workers 2` works one study from two
processes on the real GPU: the budget measured once each."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

REPO = Path(__file__).resolve().parents[2]


def _tune(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "tune", "--op", "mm", "--shape", "16,512,512",
                           "--device", "cuda", "--db", f"sqlite:///{db}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_a_gpu_index_the_machine_lacks_is_refused(tmp_path):
    count = torch.cuda.device_count()
    p = _tune(tmp_path / "t.db", "--gpus", f"0,{count}", "--trials", "4")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"--gpus names GPU {count}, but this machine has {count}" in p.stderr
    assert not (tmp_path / "t.db").exists()


def test_two_workers_on_one_gpu_measure_each_config_once(tmp_path):
    import optuna

    db = tmp_path / "t.db"
    p = _tune(db, "--gpus", "0", "--workers", "2", "--trials", "16", "--seed", "0")
    assert p.returncode == 0, p.stderr[-3000:]
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    trials = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}").get_trials()
    measured = [t.user_attrs["canonical"] for t in trials
                if t.user_attrs.get("status") in {"ok", "failed", "wrong", "crashed", "hang"}
                and not t.user_attrs.get("duplicate")]
    assert len(measured) == len(set(measured)) == 16


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_work_one_study_and_measure_each_config_once(tmp_path):
    """`--gpus 0,1`: one worker on each GPU, one study, the budget measured once each, and both GPUs
    measured some of it (each trial records the GPU that timed it)."""
    import optuna

    db = tmp_path / "t.db"
    p = _tune(db, "--gpus", "0,1", "--trials", "16", "--seed", "0")
    assert p.returncode == 0, p.stderr[-3000:]
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    trials = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}").get_trials()
    done = [t for t in trials if t.user_attrs.get("status") in {"ok", "failed", "wrong", "crashed", "hang"}
            and not t.user_attrs.get("duplicate")]
    measured = [t.user_attrs["canonical"] for t in done]
    assert len(measured) == len(set(measured)) == 16
    assert {t.user_attrs.get("gpu") for t in done} == {"0", "1"}
