"""The stream-K probe times configs the search could pick, and its iteration shares are the
kernels' own schedule (kernels/streamk_mm.py dp_tiles): session 9's qkv M=512 arithmetic."""

from kernels import get_kernel
from kernels.mm import PERSISTENT_PINNED
from tuner.benchmarks.streamk_probe import FORMS, KEYS, TILES, iterations_per_program


def test_every_case_is_a_valid_config_of_each_kernel_it_runs():
    mm = get_kernel("mm")
    for (M, N, K), _ in KEYS:
        key = (M, N, K, 1)
        for tile in TILES:
            for variant, knobs in [("persistent", {}), *(("streamk", k) for k in FORMS.values())]:
                c = mm.canonical(key, PERSISTENT_PINNED | {"variant": variant, "SPLIT_K": 1, **tile, **knobs})
                assert mm.invalid_reason(key, c, "bf16", "cuda") is None, (key, c)


def test_iterations_per_program_on_132_sms():
    # qkv M=512, 128x256 tiles: 72 tiles of 56 iterations; the persistent kernel's 72 programs run one
    # each, stream-K's 132 share 4032: 31 at most (no whole wave: the tail knob changes nothing)
    wide = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64)
    assert iterations_per_program(512, 4608, 3584, wide, 132) == {"persistent": 56, "sk": 31, "sk_tail": 31}
    # 128x128: 144 tiles, two waves for the persistent kernel; SK_TAIL_ONLY runs 132 whole and
    # splits 12 x 56 over 132 programs (6 at most): 62 either way, in another order
    square = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64)
    assert iterations_per_program(512, 4608, 3584, square, 132) == {"persistent": 112, "sk": 62, "sk_tail": 62}
    # 15 x 20 = 300 tiles of 4 iterations: 3 waves (12) against 1 whole wave + 168 x 4 shared (4 + 6)
    # or 2 whole waves + 36 x 4 shared (8 + 2)
    assert iterations_per_program(1920, 2560, 256, square, 132) == {"persistent": 12, "sk": 10, "sk_tail": 10}
