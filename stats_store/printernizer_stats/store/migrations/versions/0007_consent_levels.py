"""reports keep the consent level they were made at

Reports stored before levels existed held every part: they are at the highest
level (4, CONSENT_LEVEL_ERRORS). The rollups gain tallies of the installations
that shared each part, computed by a full rebuild, asked for here.

Revision ID: 0007
Revises: 0006
Created: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

EVERYTHING = 4
state = sa.table("rollup_state", sa.column("rebuild_requested", sa.Boolean))


def upgrade() -> None:
    # Added in place (no table rebuild on SQLite): the default fills the rows there are.
    op.add_column(
        "reports",
        sa.Column("consent_level", sa.SmallInteger(), nullable=False, server_default=str(EVERYTHING)),
    )
    op.execute(state.update().values(rebuild_requested=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # rebuilt there, with its ids never reused
        with op.batch_alter_table(
            "reports", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch_op:
            batch_op.drop_column("consent_level")
    else:
        op.drop_column("reports", "consent_level")
    op.execute(state.update().values(rebuild_requested=True))
