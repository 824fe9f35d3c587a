"""host_cost's command line: a name --profile does not know is refused before any GPU work."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_unknown_profile_name_is_refused_with_the_names_it_takes():
    p = subprocess.run([sys.executable, "-m", "tuner.benchmarks.host_cost", "--profile", "persistent_us", "cublas"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2  # argparse's usage error, not a CUDA error from a host without a GPU
    assert "unknown call(s) cublas" in p.stderr and "persistent_host_desc_us" in p.stderr
