"""The wave probe's shapes have exactly the tile counts it names, its configs are valid persistent
and stream-K configs of mm there, and the kernels' own schedule makes 132 and 264 tiles whole waves
(stream-K then runs every tile data-parallel) and 12 tiles one split over every program."""
import pytest

from kernels import get_kernel
from kernels.mm import PERSISTENT_PINNED
from kernels.streamk_mm import dp_tiles
from tuner.benchmarks.streamk_probe import iterations_per_program
from tuner.benchmarks.wave_probe import FORMS, SPLITS, TILE_COUNTS, TILES, shape_for


def test_shapes_have_the_named_tile_counts_and_valid_configs():
    mm = get_kernel("mm")
    for tile in TILES:
        for tiles in TILE_COUNTS:
            M, N, K = shape_for(tiles, tile)
            assert (M // tile["BLOCK_M"]) * (N // tile["BLOCK_N"]) == tiles and N % tile["BLOCK_N"] == 0
            for variant, knobs in [("persistent", {}), *(("streamk", k) for k in FORMS.values())]:
                c = mm.canonical((M, N, K, 1), PERSISTENT_PINNED | {"variant": variant, "SPLIT_K": 1, **tile, **knobs})
                assert mm.invalid_reason((M, N, K, 1), c, "bf16", "cuda") is None, (tiles, c)


def test_whole_waves_run_data_parallel_and_a_partial_one_is_shared():
    square = TILES[0]
    assert dp_tiles(132, 132) == 132 and dp_tiles(264, 132) == 264 and dp_tiles(12, 132) == 0
    # 12 tiles of 56 iterations over 132 programs: at most 6 a program, against 56 for one tile
    assert iterations_per_program(*shape_for(12, square), square, 132) == {"persistent": 56, "sk": 6, "sk_tail": 6}
    # SK_SPLIT: 144 tiles = 132 whole + 12 cut in 4 pieces of 14 (48 programs): 56 + 14
    assert iterations_per_program(*shape_for(144, square), square, 132, SPLITS) == {
        "persistent": 112, "sk": 62, "sk_tail": 62, "sk_split2": 84, "sk_split4": 70}
    with pytest.raises(ValueError, match="multiple"):
        shape_for(66, square)
