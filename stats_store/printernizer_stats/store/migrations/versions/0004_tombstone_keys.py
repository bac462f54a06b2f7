"""tombstones keep the installation's key; a counter for reports with unknown fields

Revision ID: 0004
Revises: 0003
Created: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mssql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The counter this revision adds (0002 made the earlier ones).
COUNTERS = ("REPORTS_WITH_UNKNOWN_FIELDS",)

counters = sa.table("ingest_counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger))


def upgrade() -> None:
    # Tombstones made before this revision keep no key: nobody is answered about them.
    with op.batch_alter_table("tombstones", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "public_key",
                sa.LargeBinary(length=32).with_variant(mssql.VARBINARY(length=32), "mssql"),
                nullable=True,
            )
        )
    op.bulk_insert(counters, [{"name": name, "value": 0} for name in COUNTERS])


def downgrade() -> None:
    op.execute(counters.delete().where(counters.c.name.in_(COUNTERS)))
    with op.batch_alter_table("tombstones", schema=None) as batch_op:
        batch_op.drop_column("public_key")
