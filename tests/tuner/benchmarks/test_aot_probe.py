"""The sm_90 compile probe without a GPU (Triton compiles for an explicit target with its own
ptxas): a persistent config compiles to wgmma, a WARP_SPECIALIZE config is compared with its twin,
one over an SM's shared memory is marked (Triton checks that at load, not compile), and one Triton
rejects is reported, not raised. Run in a child without TRITON_INTERPRET (under
the interpreter, triton.jit functions cannot be compiled)."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

CODE = """
import json
from tuner.benchmarks.aot_probe import probe
base = dict(variant="persistent", BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3,
            OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=0, EPILOGUE_SUBTILE=0)
rows = [probe(("mm", base, True)), probe(("scaled_mm", base | {"WARP_SPECIALIZE": 1}, True)),
        probe(("mm", base | {"BLOCK_N": 512, "num_stages": 8}, False)), probe(("mm", base | {"BLOCK_N": 96}, False)),
        probe(("mm", base | {"HOST_DESC": 1}, False)),
        probe(("mm", base | {"variant": "streamk", "HOST_DESC": 1}, False)),
        probe(("mm", base | {"BLOCK_M": 128, "num_warps": 8, "num_stages": 4, "num_ctas": 2}, False))]
print("RESULT " + json.dumps(rows))
"""


def test_probe_compiles_for_sm90_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-W", "ignore", "-c", CODE], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    plain, ws, too_big, rejected, host, streamk_host, cluster = json.loads(
        next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert plain["compiles"] and plain["wgmma"] and plain["warps"] == 4 and plain["shared"] > 0
    assert "same_binary_as_ws0" not in plain  # only WARP_SPECIALIZE configs are paired
    assert ws["compiles"] and isinstance(ws["same_binary_as_ws0"], bool)
    assert plain["fits"] and ws["fits"]
    # 8 stages of 64x64 + 64x512 bf16 tiles compile, but need more shared memory than an SM has
    assert too_big["compiles"] and too_big["fits"] is False and too_big["shared"] > 232448
    assert rejected["compiles"] is False and "power of 2" in rejected["error"]  # tl.arange over 96
    # HOST_DESC=1: the kernels on the host's descriptors (persistent_host_mm; stream-K's own kernel
    # with descriptor arguments), their block shapes filled in from the config
    assert host["compiles"] and host["wgmma"] and streamk_host["compiles"] and streamk_host["wgmma"]
    # num_ctas=2: a 2-CTA cluster shares the tile (half the shared memory a CTA); the row says whether
    # the operands are multicast (Triton 3.6 and this host's: not on sm_90, results/aot_sm90 num_ctas.jsonl)
    assert plain["ctas"] == 1 and cluster["compiles"] and cluster["ctas"] == 2
    assert isinstance(cluster["tma_multicast"], bool)
