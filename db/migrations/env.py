"""Alembic environment: runs on the engine tuner opened, with tuner's own version table."""

from alembic import context

from db.models import VERSION_TABLE, Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things in place
    )
    with context.begin_transaction():
        context.run_migrations()
