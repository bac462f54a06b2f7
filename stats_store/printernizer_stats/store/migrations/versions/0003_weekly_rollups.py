"""weekly rollups and sent e-mail reports for the analytics server

Revision ID: 0003
Revises: 0002
Created: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "weekly_totals",
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("active", sa.Integer(), nullable=False),
        sa.Column("jobs_completed", sa.BigInteger(), nullable=False),
        sa.Column("jobs_failed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("week", name=op.f("pk_weekly_totals")),
    )
    op.create_table(
        "weekly_groups",
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("dimension", sa.SmallInteger(), nullable=False),
        sa.Column("value_a", sa.Integer(), nullable=False),
        sa.Column("value_b", sa.Integer(), nullable=False),
        sa.Column("value_c", sa.Integer(), nullable=False),
        sa.Column("installations", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "week", "dimension", "value_a", "value_b", "value_c", name=op.f("pk_weekly_groups")
        ),
    )
    op.create_table(
        "weekly_pairs",
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("first", sa.SmallInteger(), nullable=False),
        sa.Column("second", sa.SmallInteger(), nullable=False),
        sa.Column("first_a", sa.Integer(), nullable=False),
        sa.Column("first_b", sa.Integer(), nullable=False),
        sa.Column("first_c", sa.Integer(), nullable=False),
        sa.Column("second_a", sa.Integer(), nullable=False),
        sa.Column("second_b", sa.Integer(), nullable=False),
        sa.Column("second_c", sa.Integer(), nullable=False),
        sa.Column("installations", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "week",
            "first",
            "second",
            "first_a",
            "first_b",
            "first_c",
            "second_a",
            "second_b",
            "second_c",
            name=op.f("pk_weekly_pairs"),
        ),
    )
    op.create_table(
        "weekly_new",
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("installations", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("week", name=op.f("pk_weekly_new")),
    )
    op.create_table(
        "weekly_arrivals",
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("week", name=op.f("pk_weekly_arrivals")),
    )
    op.create_table(
        "rollup_state",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("last_report", sa.BigInteger(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_state")),
    )

    op.create_table(
        "email_reports",
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("period", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "period", name=op.f("pk_email_reports")),
    )


def downgrade() -> None:
    op.drop_table("email_reports")
    op.drop_table("rollup_state")
    op.drop_table("weekly_arrivals")
    op.drop_table("weekly_new")
    op.drop_table("weekly_pairs")
    op.drop_table("weekly_groups")
    op.drop_table("weekly_totals")
