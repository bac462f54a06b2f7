"""a row for each ingest counter, so counting is one UPDATE

Revision ID: 0002
Revises: 0001
Created: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The counters as this revision knows them; a later counter gets its own migration.
COUNTERS = (
    "REPORTS_DUPLICATE",
    "UNKNOWN_ENUM_VALUES",
    "SUBMISSIONS_RATE_LIMITED",
    "INSTALLATIONS_DELETED",
    "INSTALLATIONS_DELETED_BY_OPERATOR",
    "REPORTS_EXPIRED",
)

counters = sa.table("ingest_counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger))


def upgrade() -> None:
    op.bulk_insert(counters, [{"name": name, "value": 0} for name in COUNTERS])


def downgrade() -> None:
    op.execute(counters.delete().where(counters.c.name.in_(COUNTERS)))
