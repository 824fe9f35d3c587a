"""fp8 persistent tiles with and without PRECISE_ACC (max_num_imprecise_acc=BLOCK_K): registers,
stack, wgmma, compiled for sm_90 (run with the GPU host's Triton: see ../README.md)."""
import json

from tuner.benchmarks.aot_probe import probe

base = dict(variant="persistent", GROUP_M=8, OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=0, EPILOGUE_SUBTILE=0)
tiles = [(16, 64, 256, 4), (16, 128, 128, 4), (64, 128, 128, 4), (128, 128, 128, 4), (128, 128, 128, 8),
         (128, 256, 128, 8), (128, 64, 128, 4), (64, 256, 128, 8)]
for bm, bn, bk, w in tiles:
    for precise in (0, 1):
        for ws in ((0, 1) if w == 4 and bm >= 64 else (0,)):
            cfg = dict(base, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=3, PRECISE_ACC=precise,
                       WARP_SPECIALIZE=ws)
            print(json.dumps(probe(("scaled_mm", cfg, False))), flush=True)
