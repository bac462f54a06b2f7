"""reports keep their jobs per printer family

Reports of schema version 3 count their jobs per printer family (earlier
reports have none). The jobs by deployment mode and version now count the
installations that shared their usage rather than all active ones, so a full
rebuild of the rollups is asked for.

Revision ID: 0008
Revises: 0007
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

state = sa.table("rollup_state", sa.column("rebuild_requested", sa.Boolean))

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_printer_jobs",
        sa.Column("report", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("printer_type", sa.SmallInteger(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["report"], ["reports.id"], name=op.f("fk_report_printer_jobs_report"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("report", "printer_type", name=op.f("pk_report_printer_jobs")),
    )
    op.execute(state.update().values(rebuild_requested=True))


def downgrade() -> None:
    op.drop_table("report_printer_jobs")
    op.execute(state.update().values(rebuild_requested=True))
