import json
from tuner.benchmarks.aot_probe import probe
base = dict(variant="persistent", GROUP_M=8, OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=0, EPILOGUE_SUBTILE=0)
jobs = []
for op in ("mm", "scaled_mm"):
    for bm, bn, bk in ((128, 256, 64), (256, 128, 64), (128, 256, 128), (256, 128, 32)):
        if op == "mm" and bk == 128: bk = 64
        for st in (2, 3):
            jobs.append((op, dict(base, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=st), False))
for bm, bn in ((128, 256), (256, 128)):
    jobs.append(("mm", dict(base, variant="streamk", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=64, num_warps=4, num_stages=3), False))
for j in jobs:
    r = probe(j)
    c = r["config"]
    print(json.dumps(r))
