"""installations, weekly reports and their lists, tombstones

Revision ID: 0001
Revises:
Created: 2026-11-22 21:19:54.351063
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mssql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_ingest_counters")),
    )
    op.create_table(
        "installations",
        sa.Column(
            "installation_id",
            sa.LargeBinary(length=16).with_variant(mssql.VARBINARY(length=16), "mssql"),
            nullable=False,
        ),
        sa.Column(
            "public_key",
            sa.LargeBinary(length=32).with_variant(mssql.VARBINARY(length=32), "mssql"),
            nullable=False,
        ),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_week", sa.Integer(), nullable=False),
        sa.Column("last_week", sa.Integer(), nullable=False),
        sa.Column("last_accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("app_major", sa.Integer(), nullable=False),
        sa.Column("app_minor", sa.Integer(), nullable=False),
        sa.Column("app_patch", sa.Integer(), nullable=False),
        sa.Column("app_prerelease", sa.Boolean(), nullable=False),
        sa.Column("python_major", sa.Integer(), nullable=False),
        sa.Column("python_minor", sa.Integer(), nullable=False),
        sa.Column("python_patch", sa.Integer(), nullable=False),
        sa.Column("platform", sa.SmallInteger(), nullable=False),
        sa.Column("architecture", sa.SmallInteger(), nullable=False),
        sa.Column("deployment_mode", sa.SmallInteger(), nullable=False),
        sa.Column("country", sa.SmallInteger(), nullable=False),
        sa.Column("printer_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("installation_id", name=op.f("pk_installations")),
    )
    with op.batch_alter_table("installations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_installations_last_week"), ["last_week"], unique=False)

    op.create_table(
        "tombstones",
        sa.Column(
            "installation_id",
            sa.LargeBinary(length=16).with_variant(mssql.VARBINARY(length=16), "mssql"),
            nullable=False,
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "receipt_id",
            sa.LargeBinary(length=16).with_variant(mssql.VARBINARY(length=16), "mssql"),
            nullable=False,
        ),
        sa.Column("reports_deleted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("installation_id", name=op.f("pk_tombstones")),
    )
    op.create_table(
        "reports",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column(
            "report_id",
            sa.LargeBinary(length=16).with_variant(mssql.VARBINARY(length=16), "mssql"),
            nullable=False,
        ),
        sa.Column(
            "installation_id",
            sa.LargeBinary(length=16).with_variant(mssql.VARBINARY(length=16), "mssql"),
            nullable=False,
        ),
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("schema_version", sa.SmallInteger(), nullable=False),
        sa.Column(
            "receipt_id",
            sa.LargeBinary(length=16).with_variant(mssql.VARBINARY(length=16), "mssql"),
            nullable=False,
        ),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("app_major", sa.Integer(), nullable=False),
        sa.Column("app_minor", sa.Integer(), nullable=False),
        sa.Column("app_patch", sa.Integer(), nullable=False),
        sa.Column("app_prerelease", sa.Boolean(), nullable=False),
        sa.Column("python_major", sa.Integer(), nullable=False),
        sa.Column("python_minor", sa.Integer(), nullable=False),
        sa.Column("python_patch", sa.Integer(), nullable=False),
        sa.Column("platform", sa.SmallInteger(), nullable=False),
        sa.Column("architecture", sa.SmallInteger(), nullable=False),
        sa.Column("deployment_mode", sa.SmallInteger(), nullable=False),
        sa.Column("country", sa.SmallInteger(), nullable=False),
        sa.Column("printer_count", sa.Integer(), nullable=False),
        sa.Column("jobs_created", sa.Integer(), nullable=False),
        sa.Column("jobs_completed", sa.Integer(), nullable=False),
        sa.Column("jobs_failed", sa.Integer(), nullable=False),
        sa.Column("files_downloaded", sa.Integer(), nullable=False),
        sa.Column("files_uploaded", sa.Integer(), nullable=False),
        sa.Column("uptime_hours", sa.SmallInteger(), nullable=False),
        sa.Column("app_starts", sa.Integer(), nullable=False),
        sa.Column("unclean_shutdowns", sa.Integer(), nullable=False),
        sa.Column("printer_connections", sa.Integer(), nullable=False),
        sa.Column("printer_disconnections", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["installation_id"],
            ["installations.installation_id"],
            name=op.f("fk_reports_installation_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
        sa.UniqueConstraint("installation_id", "week", name=op.f("uq_reports_installation_id_week")),
        sa.UniqueConstraint("receipt_id", name=op.f("uq_reports_receipt_id")),
        sa.UniqueConstraint("report_id", name=op.f("uq_reports_report_id")),
    )
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reports_week"), ["week"], unique=False)

    op.create_table(
        "report_errors",
        sa.Column("report", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("error_type", sa.SmallInteger(), nullable=False),
        sa.Column("component", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["report"], ["reports.id"], name=op.f("fk_report_errors_report"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("report", "error_type", "component", name=op.f("pk_report_errors")),
    )
    op.create_table(
        "report_features",
        sa.Column("report", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("feature", sa.SmallInteger(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["report"], ["reports.id"], name=op.f("fk_report_features_report"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("report", "feature", name=op.f("pk_report_features")),
    )
    op.create_table(
        "report_job_durations",
        sa.Column("report", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("duration", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["report"], ["reports.id"], name=op.f("fk_report_job_durations_report"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("report", "duration", name=op.f("pk_report_job_durations")),
    )
    op.create_table(
        "report_job_failures",
        sa.Column("report", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("reason", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["report"], ["reports.id"], name=op.f("fk_report_job_failures_report"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("report", "reason", name=op.f("pk_report_job_failures")),
    )
    op.create_table(
        "report_printers",
        sa.Column("report", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("printer_type", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["report"], ["reports.id"], name=op.f("fk_report_printers_report"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("report", "printer_type", name=op.f("pk_report_printers")),
    )


def downgrade() -> None:
    op.drop_table("report_printers")
    op.drop_table("report_job_failures")
    op.drop_table("report_job_durations")
    op.drop_table("report_features")
    op.drop_table("report_errors")
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reports_week"))

    op.drop_table("reports")
    op.drop_table("tombstones")
    with op.batch_alter_table("installations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_installations_last_week"))

    op.drop_table("installations")
    op.drop_table("ingest_counters")
