"""How long does a wave take, alone and partial? An experiment for issue 12 (H200).

streamk_probe set stream-K's time against its iterations' share of the persistent kernel's, which
assumes every K iteration costs the same. It may not: with every SM busy the tile loop may be bound
by what L2 can feed 132 SMs, with 12 busy by latency. Here K = 3584 (qkv's and o's) and M = 512,
N chosen so one tile config gives 12, 64, 132, 144 and 264 tiles on the 132 SMs: the persistent
kernel's time per wave, whole and partial; stream-K on the same shapes (at 132 and 264 tiles the
waves are whole and stream-K runs every tile data-parallel, so it times its kernel's code against
the persistent kernel's; at 12 tiles every tile is split over ~11 programs, so it times the
finishers' chains of partials); SK_SPLIT 2 and 4 with SK_TAIL_ONLY (the tail cut into that many
aligned pieces a tile: fewer partials a finisher adds); cuBLAS beside. Timed as the search times
(side_by_side).

usage: python -m tuner.benchmarks.wave_probe   (on the GPU host; one JSON line per shape x tile)
"""

from __future__ import annotations

import json

import torch
import triton

from tuner.benchmarks.streamk_probe import iterations_per_program, runs_of

TILES = [dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
         dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)]
M, K = 512, 3584
TILE_COUNTS = (12, 64, 132, 144, 264)  # multiples of the 4 M tiles
SPLITS = (2, 4)
FORMS = {"sk": {}, "sk_tail": {"SK_TAIL_ONLY": 1},
         **{f"sk_split{s}": {"SK_TAIL_ONLY": 1, "SK_SPLIT": s} for s in SPLITS}}


def shape_for(tiles: int, config: dict) -> tuple[int, int, int]:
    """(M, N, K) whose output has `tiles` tiles of `config` (a multiple of M's tile rows)."""
    rows = triton.cdiv(M, config["BLOCK_M"])
    if tiles % rows:
        raise ValueError(f"{tiles} tiles are not a multiple of {rows} tile rows")
    return M, tiles // rows * config["BLOCK_N"], K


def probe(tiles: int, config: dict) -> dict:
    from kernels.persistent_mm import sm_count_of
    from tuner.benchmarks.side_by_side import rel_error, rotated_sets, time_side_by_side

    _, N, _ = shape_for(tiles, config)
    timed, outs = time_side_by_side(runs_of(config, FORMS, False), rotated_sets(M, N, K, False), M, N)
    iters = iterations_per_program(M, N, K, config, sm_count_of(torch.device("cuda")), SPLITS)
    row = {"shape": [M, N, K], "tiles": tiles, "config": config, **timed, "iterations_per_program": iters}
    for name in ("persistent", *FORMS):
        row[f"{name}_us_per_iteration"] = round(timed[f"{name}_us"] / iters[name], 4)
    row["rel_error_vs_cublas"] = max(rel_error(outs[n], outs["cublas"]) for n in ("persistent", *FORMS))
    return row


def main() -> None:
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}))
    for config in TILES:
        for tiles in TILE_COUNTS:
            try:
                row = probe(tiles, config)
            except Exception as e:  # noqa: BLE001 — a case that fails is reported, the others still run
                row = {"tiles": tiles, "config": config, "error": f"{type(e).__name__}: {e}"[:400]}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
