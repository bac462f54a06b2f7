"""rollups kept incrementally: tallies apart; installations by newest week; a rebuild asked for

The rollups that are not an API dimension (features, errors, jobs) move from
`weekly_groups` (where they had codes >= 100 beside the Dimension numbers) to
`weekly_tallies`. `weekly_latest` counts installations by the week of their
newest report (those active in the last weeks, without counting the fleet).
`rollup_state` no longer keeps a report count (deletions now
take their reports out of the rollups as they delete them) and gains
`rebuild_requested`, set here: the next refresh rebuilds the rollups whole,
as the new maintenance counts them. On SQLite, report row ids are never
reused any more (AUTOINCREMENT): the rollups' watermark is a row id.

Revision ID: 0005
Revises: 0004
Created: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The tallies' codes, as weekly_groups' dimension held them.
FIRST_TALLY = 100
VALUES = ("week", "value_a", "value_b", "value_c", "installations", "amount")
groups = sa.table("weekly_groups", sa.column("dimension", sa.SmallInteger), *(sa.column(v) for v in VALUES))
tallies = sa.table("weekly_tallies", sa.column("tally", sa.SmallInteger), *(sa.column(v) for v in VALUES))
state = sa.table("rollup_state", sa.column("rebuild_requested", sa.Boolean))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("reports", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
        # Not even the ids of the newest rows deleted before now (the watermark may be one).
        op.execute("DELETE FROM sqlite_sequence WHERE name = 'reports'")
        op.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'reports', max("
            "coalesce((SELECT max(id) FROM reports), 0), "
            "coalesce((SELECT max(last_report) FROM rollup_state), 0))"
        )
    op.create_table(
        "weekly_tallies",
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("tally", sa.SmallInteger(), nullable=False),
        sa.Column("value_a", sa.Integer(), nullable=False),
        sa.Column("value_b", sa.Integer(), nullable=False),
        sa.Column("value_c", sa.Integer(), nullable=False),
        sa.Column("installations", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "week", "tally", "value_a", "value_b", "value_c", name=op.f("pk_weekly_tallies")
        ),
    )
    op.create_table(
        "weekly_latest",
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("installations", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("week", name=op.f("pk_weekly_latest")),
    )
    # The figures stay readable until the rebuild: moved, not recomputed.
    moved = sa.select(groups.c.dimension, *(groups.c[v] for v in VALUES)).where(
        groups.c.dimension >= FIRST_TALLY
    )
    op.execute(tallies.insert().from_select(["tally", *VALUES], moved))
    op.execute(groups.delete().where(groups.c.dimension >= FIRST_TALLY))
    with op.batch_alter_table("rollup_state", schema=None) as batch_op:
        batch_op.drop_column("reports")
        batch_op.add_column(
            sa.Column("rebuild_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(state.update().values(rebuild_requested=True))


def downgrade() -> None:
    with op.batch_alter_table("rollup_state", schema=None) as batch_op:
        batch_op.drop_column("rebuild_requested")
        # No count: the earlier refresh then compares every week's reports with its rollup.
        batch_op.add_column(sa.Column("reports", sa.BigInteger(), nullable=False, server_default="0"))
    back = sa.select(tallies.c.tally, *(tallies.c[v] for v in VALUES))
    op.execute(groups.insert().from_select(["dimension", *VALUES], back))
    op.drop_table("weekly_tallies")
    op.drop_table("weekly_latest")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("reports", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass
