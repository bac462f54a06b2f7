"""tallies with a fourth value: release health and usage by app version

`weekly_tallies` gains `value_d`, so that a tally can be kept per app version
(a, b, c) and one more value (a feature, a failure reason, a deployment mode,
an activity). The new tallies (release health, usage) are computed by a full
rebuild, asked for here; until it runs, the existing tallies stay readable
with value_d 0.

Revision ID: 0006
Revises: 0005
Created: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KEY = ["week", "tally", "value_a", "value_b", "value_c"]
state = sa.table("rollup_state", sa.column("rebuild_requested", sa.Boolean))
tallies = sa.table("weekly_tallies", sa.column("value_d", sa.Integer))


def upgrade() -> None:
    with op.batch_alter_table("weekly_tallies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("value_d", sa.Integer(), nullable=False, server_default="0"))
        batch_op.drop_constraint("pk_weekly_tallies", type_="primary")
        batch_op.create_primary_key("pk_weekly_tallies", [*KEY, "value_d"])
    with op.batch_alter_table("weekly_tallies", schema=None) as batch_op:
        batch_op.alter_column("value_d", server_default=None)
    op.execute(state.update().values(rebuild_requested=True))


def downgrade() -> None:
    # The tallies with a fourth value have no place before this revision.
    op.execute(tallies.delete().where(tallies.c.value_d != 0))
    with op.batch_alter_table("weekly_tallies", schema=None) as batch_op:
        batch_op.drop_constraint("pk_weekly_tallies", type_="primary")
        batch_op.drop_column("value_d")
        batch_op.create_primary_key("pk_weekly_tallies", KEY)
    op.execute(state.update().values(rebuild_requested=True))
