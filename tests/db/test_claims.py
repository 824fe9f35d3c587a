"""Claims on a real SQLite file and a real PostgreSQL: one winner per config, the budget exact
under concurrent claims, given back on release, backfilled for older studies."""

from concurrent.futures import ThreadPoolExecutor

from db import claims, open_database
from db.claims import Taken


def _claim(db, config, number, limit=None, study="s"):
    return claims.claim(db.session, study_name=study, config=config, trial_number=number, owner="test", limit=limit)


def test_one_winner_per_config_and_the_budget_exact(db_url):
    db = open_database(db_url)
    try:
        with ThreadPoolExecutor(8) as pool:  # 16 connections race for one config
            got = list(pool.map(lambda n: _claim(db, '{"x": 1}', n), range(16)))
        assert got.count(Taken.CLAIMED) == 1 and got.count(Taken.TAKEN) == 15
        with ThreadPoolExecutor(8) as pool:  # 16 configs race for a budget of 5 (one taken above)
            got = list(pool.map(lambda n: _claim(db, f'{{"x": {n + 2}}}', 100 + n, limit=5), range(16)))
        assert got.count(Taken.CLAIMED) == 4 and got.count(Taken.FULL) == 12
        assert claims.count(db.session, "s") == 5 and claims.count(db.session, "other") == 0
        assert _claim(db, '{"x": 1}', 200, study="other") == Taken.CLAIMED  # studies are apart
        # a trial that ended unmeasured gives its config back
        assert claims.claimed(db.session, "s", [0, 1, 2, 999]) <= {0, 1, 2}
        (winner,) = claims.claimed(db.session, "s", range(16))
        assert claims.release(db.session, "s", [winner]) == 1
        assert _claim(db, '{"x": 1}', 300) == Taken.CLAIMED
        # configs measured before claims existed are claimed once, whatever is claimed already
        assert claims.backfill(db.session, "s", {'{"x": 1}': 300, '{"x": 99}': 7}, "test") == 1
        assert _claim(db, '{"x": 99}', 301) == Taken.TAKEN
    finally:
        db.dispose()
