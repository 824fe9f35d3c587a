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
