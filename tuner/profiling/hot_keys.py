"""Keys for `tuner tune --from-profile`: the hot GEMMs of a stored profile run, hottest first."""

from __future__ import annotations

from tuner.errors import UserError


def profile_key_ops() -> list[str]:
    """The ops whose keys a profile gives (Coverage.profile_keys), in REGISTRY order."""
    from kernels import coverages

    return [op for op, cov in coverages().items() if cov.profile_keys]


def check_profile_op(op: str) -> None:
    """UserError unless `tune --from-profile` can give keys for `op`: its declared reason where
    it gives one (bmm), else the ops that can."""
    from kernels import coverage

    cov = coverage(op)
    if cov is not None and cov.no_profile_keys:
        raise UserError(f"--from-profile cannot give {op} keys: {cov.no_profile_keys}")
    if cov is None or not cov.profile_keys:
        raise UserError(f"--from-profile gives keys for {', '.join(profile_key_ops())} only, not {op!r}")


def keys_from_profile(db_url: str | None, profile_id_or_latest: str | int, top: int | None, op: str = "mm") -> list[str]:
    """Shape strings ("16,4608,3584", i.e. M,N,K with nn.Linear's weight layout BT=1) of the
    profile's rows that `op`'s kernel runs (the rows of the aten ops its COVERAGE declares: aten::mm,
    linear and matmul rows for mm; aten::addmm rows for addmm) without a batch dimension, in rank
    order, without repeats, at most `top`.

    Unknown profile id, no database, or an op without Coverage.profile_keys: UserError (bmm rows
    do not record their operands' strides, which its key needs).
    """
    from tuner.store import open_db
    from db import profile_queries as pq

    check_profile_op(op)
    if top is not None and top < 1:
        raise UserError("--top must be a positive number")
    db = open_db(db_url, create=False)
    try:
        with db.session() as s:
            run = pq.get_profile_run(s, profile_id_or_latest)
            if run is None:
                which = "no profile has been stored yet" if str(profile_id_or_latest).strip().lower() == "latest" \
                    else f"no stored profile has id {profile_id_or_latest!r}"
                raise UserError(f"{which}; run `tuner profile` first, or pick an id it printed")
            keys: list[str] = []
            for h in pq.hot_ops(s, run):
                k = h.key or {}
                if h.tunable != op or k.get("batch", 1) != 1:
                    continue
                try:
                    text = f"{int(k['M'])},{int(k['N'])},{int(k['K'])}"
                except (KeyError, TypeError, ValueError):
                    continue
                if text not in keys:
                    keys.append(text)
                if top is not None and len(keys) >= top:
                    break
            return keys
    finally:
        db.dispose()
