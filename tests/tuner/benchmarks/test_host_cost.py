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


def test_the_routed_key_goes_to_the_persistent_kernel_outside_captures_and_its_neighbour_native():
    """router_persistent_us times the eager route; if the router's eager rule changed so that this
    record no longer passed it, the field would time the native path under the routed name."""
    from tuner.benchmarks.host_cost import ROUTED_RECORD
    from tuner.inject import gemm_router as gr

    plan = gr.plan_routes([ROUTED_RECORD], max_tokens=16)
    table = gr.build_table(plan)
    route = gr.lookup(table, "mm", 16, 128, 64, "bf16")
    assert route.target == gr.PERSISTENT and route.eager
    assert gr.lookup(table, "mm", 16, 192, 64, "bf16") is None
