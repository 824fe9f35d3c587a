"""Merge the best configs of several tuner databases into one (same environments kept apart).

usage: python -m tuner.benchmarks.merge_dbs DEST_DB SRC_DB [SRC_DB ...]
"""

from __future__ import annotations

import sys

from db import open_database, queries


def _source_now(kernel: str):
    """The op's source hash of a config today (None: the op does not load here, every other hash wins)."""
    try:
        from kernels import get_kernel

        return get_kernel(kernel).source_hash
    except Exception:
        return None


_FIELDS = ("kernel_source_hash", "config", "time_us", "untuned_us", "native_us", "speedup_vs_untuned",
           "speedup_vs_native", "max_abs_error", "rel_error", "trials_used", "timing", "study_name",
           "baselines_us", "confirmed")  # (a provisional row must not merge in as confirmed)


def merge(dest: str, sources: list[str]) -> int:
    out = open_database(dest)
    n = 0
    with out.session() as s:
        for src in sources:
            db = open_database(src, create=False)
            with db.session() as r:
                recs = queries.records(queries.best_configs(r))
            db.dispose()
            for rec in recs:
                env_fields = dict(rec["environment"])
                env = queries.get_or_create_environment(s, env_fields.pop("fingerprint"), env_fields)
                run = queries.start_run(s, env, kernel=rec["kernel"], sampler="merge", device=env.device,
                                        compile_workers=0, status="done", reason=f"merged from {src}")
                queries.upsert_best(s, environment_id=env.id, kernel=rec["kernel"], key_values=rec["key"],
                                    dtype=rec["dtype"], run_id=run.id, source_now=_source_now(rec["kernel"]),
                                    **{f: rec[f] for f in _FIELDS})
                n += 1
        s.commit()
    out.dispose()
    return n


if __name__ == "__main__":
    print(merge(sys.argv[1], sys.argv[2:]), "records merged")
