"""tuner's database: models, engine and migrations, queries. Never imports torch."""

from db.engine import (ENV_VAR, Database, DatabaseUnusable, default_url, open_database, resolve_url, shown_url,
                       unusable_from)
from db.models import BestConfig, ConsistencyResult, Environment, HotOp, ProfileRun, TuningRun

__all__ = [
    "ENV_VAR", "Database", "DatabaseUnusable", "default_url", "open_database", "resolve_url", "shown_url",
    "unusable_from",
    "BestConfig", "ConsistencyResult", "Environment", "HotOp", "ProfileRun", "TuningRun",
]
