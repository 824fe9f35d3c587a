import optuna

from tests.tuner.tuning.faulty_kernel import Faulty
from tuner.tuning.candidates import Candidates, canon_text, grid_configs


class Picky(Faulty):
    """scale 3 is refused; a "good" config ignores its scale above 1 (canonical: scale 2 -> 1)."""

    def invalid_reason(self, key, config, dtype, device, arch=9):
        return "scale 3 is refused" if config["scale"] == 3 else None

    def canonical(self, key, config):
        return {**config, "scale": 1} if config["variant"] == "good" and config["scale"] == 2 else dict(config)


def _candidates(grid=None):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return Candidates(study, Picky(), (8,), "fp32", "cpu", 9, grid)


def test_grid_is_canonical_valid_and_without_repeats():
    grid = grid_configs(Picky(), (8,), "fp32", "cpu")
    texts = [canon_text(c) for c in grid]
    assert len(texts) == len(set(texts)) == 5 * 2 - 1  # scale 3 refused; good/2 is good/1
    assert all(c["scale"] != 3 for c in grid)


def test_grid_candidates_come_in_order_then_stop():
    grid = [{"variant": "wrong", "scale": 2}, {"variant": "good", "scale": 1}]
    c = _candidates(grid)
    asked = [c.ask(), c.ask()]
    assert [a.config for a in asked] == grid and c.ask() is None
    assert asked[0].trial.user_attrs["canonical"] == canon_text(grid[0]) == asked[0].text


def test_warm_configs_are_asked_first_when_in_the_space_and_valid():
    c = _candidates()
    c.enqueue_warm([
        {"variant": "good", "scale": 2, "stray": 1},  # projected: the stray param dropped, then canonical
        {"variant": "dies", "scale": 3},  # invalid: not enqueued
        {"variant": "other", "scale": 1},  # not in the space: not enqueued
        {"variant": "hangs", "scale": 2},
    ])
    first, second = c.ask(), c.ask()
    assert (first.config, second.config) == ({"variant": "good", "scale": 1}, {"variant": "hangs", "scale": 2})
    assert first.invalid_reason is None


def test_an_invalid_candidate_carries_its_reason():
    c = _candidates([{"variant": "good", "scale": 3}])
    assert c.ask().invalid_reason == "scale 3 is refused"


def test_grid_by_parts_holds_every_config_of_the_whole_product():
    """mm, addmm and bmm enumerate their grids by variant with the knobs a variant ignores held
    (grid_spaces): mm's whole product at M=512 is 9.8M combinations (219 s on one core; the parts,
    193k: 6 s, the same 62136 configs). Every part is a sub-product of the space, so the grid holds
    nothing the space lacks; 3000 random combinations of the whole product, canonicalised and
    valid, must each be in it."""
    import math
    import random

    from kernels import get_kernel

    for op, key in [("mm", (512, 4608, 3584, 1)), ("addmm", (1500, 1024, 1024, 1)), ("bmm", (28, 512, 64, 128, 0))]:
        kernel = get_kernel(op)
        space = kernel.space(key, "bf16", "cuda")
        parts = kernel.grid_spaces(key, "bf16", "cuda")
        assert all(set(part) == set(space) and all(set(part[n]) <= set(space[n]) for n in space) for part in parts)
        walked, whole = sum(math.prod(map(len, p.values())) for p in parts), math.prod(map(len, space.values()))
        assert walked * (20 if op == "mm" else 1) < whole, (op, walked, whole)
        grid = {canon_text(c) for c in grid_configs(kernel, key, "bf16", "cuda")}
        rng, checked = random.Random(0), 0
        for _ in range(3000):
            cfg = kernel.canonical(key, {n: rng.choice(space[n]) for n in space})
            if kernel.invalid_reason(key, cfg, "bf16", "cuda") is None:
                assert canon_text(cfg) in grid, (op, cfg)
                checked += 1
        assert checked > 100, op
