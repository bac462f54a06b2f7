"""Alembic environment: runs the statistics database's migrations.

Invoked through `printernizer_stats.store.database.upgrade/downgrade` (or the
`alembic` command with `-x url=...`); always on a synchronous driver.
"""

from __future__ import annotations

from alembic import context
from printernizer_stats.store.schema import metadata
from sqlalchemy import create_engine, text

config = context.config
# An arbitrary constant naming this project's migration lock on PostgreSQL.
MIGRATION_LOCK_KEY = 0x5072696E74  # "Print"
url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")


def run_offline() -> None:
    """Write the SQL to stdout instead of running it (`alembic upgrade --sql`)."""
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    assert url, "no database URL given"
    # Parameters (identifiers in data migrations) never go into an exception's text.
    engine = create_engine(url, hide_parameters=True)
    with engine.connect() as connection:
        # Batch mode lets later migrations alter tables on SQLite too.
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas starting together migrate one after the other; the
                # later ones then find the database at head. Released at commit.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
