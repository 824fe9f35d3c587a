"""Claims: a config of a study is taken in the database before it is measured.

Several `tuner tune` processes (one host or several, one database URL) work one study. Each
INSERTs a claim before measuring; the unique key (study, config) refuses all but one, so no
config is measured twice (a read-then-write check measured 8 of 32 configs twice with 4
processes). The study's claims are also its budget: measured configs plus those in flight, all
processes together, so `--trials` stays the study's total. No torch, no Optuna here.
"""

from __future__ import annotations

import hashlib
import zlib
from enum import Enum
from typing import Callable, Iterable

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Claim


class Taken(str, Enum):
    CLAIMED = "claimed"  # this process measures it
    TAKEN = "taken"  # another trial holds it: measured, or being measured
    FULL = "full"  # the study's budget is claimed to the last config


def config_hash(text_: str) -> str:
    return hashlib.sha256(text_.encode()).hexdigest()


def _serialise(session: Session, study_name: str) -> None:
    """On PostgreSQL, claims of one study take turns (a transaction-scoped advisory lock), so the
    budget check below counts every committed claim; SQLite's single writer already does that."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"tuner_claims|{study_name}".encode())
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def claim(sessions: Callable[[], Session], *, study_name: str, config: str, trial_number: int, owner: str,
          limit: int | None = None) -> Taken:
    """Take `config` (canonical text) for `trial_number`, unless taken or the study already has
    `limit` claims."""
    with sessions() as s:
        try:
            _serialise(s, study_name)
            s.add(Claim(study_name=study_name, config_hash=config_hash(config), config=config,
                        trial_number=trial_number, owner=owner))
            s.flush()  # the INSERT: the unique key decides here
            if limit is not None and _count(s, study_name) > limit:
                s.rollback()
                return Taken.FULL
            s.commit()
            return Taken.CLAIMED
        except IntegrityError:
            s.rollback()
            return Taken.TAKEN


def _count(s: Session, study_name: str) -> int:
    return s.scalar(select(func.count()).select_from(Claim).where(Claim.study_name == study_name))


def count(sessions: Callable[[], Session], study_name: str) -> int:
    """Claims of the study: configs measured plus those in flight, every process together."""
    with sessions() as s:
        return _count(s, study_name)


def claimed(sessions: Callable[[], Session], study_name: str, trial_numbers: Iterable[int]) -> set[int]:
    """Those of `trial_numbers` that hold a claim."""
    numbers = sorted(set(trial_numbers))
    if not numbers:
        return set()
    with sessions() as s:
        return set(s.scalars(select(Claim.trial_number).where(Claim.study_name == study_name,
                                                              Claim.trial_number.in_(numbers))))


def release(sessions: Callable[[], Session], study_name: str, trial_numbers: Iterable[int]) -> int:
    """Give back the claims of trials that ended unmeasured; their configs can be measured again."""
    numbers = sorted(set(trial_numbers))
    if not numbers:
        return 0
    with sessions() as s:
        n = s.execute(delete(Claim).where(Claim.study_name == study_name, Claim.trial_number.in_(numbers))).rowcount
        s.commit()
        return n


def backfill(sessions: Callable[[], Session], study_name: str, measured: dict[str, int], owner: str) -> int:
    """Claims for configs measured without one (a study from before claims existed): canonical
    text -> trial number. A config claimed meanwhile keeps its claim."""
    with sessions() as s:
        have = set(s.scalars(select(Claim.config_hash).where(Claim.study_name == study_name)))
    added = 0
    for config, number in measured.items():
        if config_hash(config) in have:
            continue
        with sessions() as s:  # one transaction each: a conflict loses only that row
            try:
                s.add(Claim(study_name=study_name, config_hash=config_hash(config), config=config,
                            trial_number=number, owner=owner))
                s.commit()
                added += 1
            except IntegrityError:
                s.rollback()
    return added
