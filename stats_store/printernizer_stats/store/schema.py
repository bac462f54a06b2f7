"""The statistics database's schema (SQLAlchemy Core), shared by the servers.

Normalised for the analytics that read it: one row per installation with its
latest state, one row per accepted weekly report with its scalar figures,
and child rows per report for the lists (printers, features, errors, job
failures and durations). Enum columns hold the contract's enum numbers.
Nothing here can hold an IP address, a name or any free text.

Alembic migrations in `migrations/` create exactly this schema; a test
compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import mssql

# Constraint names are explicit so every engine (and every migration) agrees.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _binary(size: int) -> LargeBinary:
    # SQL Server's LargeBinary (IMAGE) cannot be a key: use VARBINARY there.
    return LargeBinary(size).with_variant(mssql.VARBINARY(size), "mssql")


ID = _binary(16)


def _version(prefix: str) -> list[Column[int]]:
    return [
        Column(f"{prefix}_major", Integer, nullable=False, default=0),
        Column(f"{prefix}_minor", Integer, nullable=False, default=0),
        Column(f"{prefix}_patch", Integer, nullable=False, default=0),
    ]


def _installation_state() -> list[Column[int]]:
    """What a report says about the installation (kept per report and, the
    latest, per installation)."""
    return [
        *_version("app"),
        Column("app_prerelease", Boolean, nullable=False, default=False),
        *_version("python"),
        Column("platform", SmallInteger, nullable=False, default=0),
        Column("architecture", SmallInteger, nullable=False, default=0),
        Column("deployment_mode", SmallInteger, nullable=False, default=0),
        Column("country", SmallInteger, nullable=False, default=0),
        Column("printer_count", Integer, nullable=False, default=0),
    ]


installations = Table(
    "installations",
    metadata,
    Column("installation_id", ID, primary_key=True),
    # The Ed25519 key registered by the first accepted report.
    Column("public_key", _binary(32), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    # ISO weeks as YYYYWW.
    Column("first_week", Integer, nullable=False),
    Column("last_week", Integer, nullable=False, index=True),
    # When a submission was last accepted: the one-per-hour rule, shared by
    # every server process through the database.
    Column("last_accepted_at", DateTime(timezone=True), nullable=False),
    *_installation_state(),
)

reports = Table(
    "reports",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("report_id", ID, nullable=False, unique=True),
    Column(
        "installation_id",
        ID,
        ForeignKey("installations.installation_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("week", Integer, nullable=False),
    Column("schema_version", SmallInteger, nullable=False),
    Column("receipt_id", ID, nullable=False, unique=True),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    *_installation_state(),
    Column("jobs_created", Integer, nullable=False, default=0),
    Column("jobs_completed", Integer, nullable=False, default=0),
    Column("jobs_failed", Integer, nullable=False, default=0),
    Column("files_downloaded", Integer, nullable=False, default=0),
    Column("files_uploaded", Integer, nullable=False, default=0),
    Column("uptime_hours", SmallInteger, nullable=False, default=0),
    Column("app_starts", Integer, nullable=False, default=0),
    Column("unclean_shutdowns", Integer, nullable=False, default=0),
    Column("printer_connections", Integer, nullable=False, default=0),
    Column("printer_disconnections", Integer, nullable=False, default=0),
    # The consent level it was made at (ConsentLevel): the parts above it were
    # not shared, and each part is counted over the reports that shared it.
    Column("consent_level", SmallInteger, nullable=False, server_default="4"),
    # One report per installation and week, whatever its report ID: a retry or
    # a second server process can never store a week twice.
    UniqueConstraint("installation_id", "week"),
    Index(None, "week"),
    # Row ids never come back after a deletion (SQLite would reuse the highest):
    # the rollups take the new reports by id (rollup_store.py).
    sqlite_autoincrement=True,
)


def _report_child(name: str, *columns: Column[int]) -> Table:
    return Table(
        name,
        metadata,
        Column("report", reports.c.id.type, ForeignKey("reports.id", ondelete="CASCADE"), primary_key=True),
        *columns,
    )


report_printers = _report_child(
    "report_printers",
    Column("printer_type", SmallInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)
report_features = _report_child(
    "report_features",
    Column("feature", SmallInteger, primary_key=True),
    Column("enabled", Boolean, nullable=False),
)
report_errors = _report_child(
    "report_errors",
    Column("error_type", SmallInteger, primary_key=True),
    Column("component", SmallInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)
report_job_failures = _report_child(
    "report_job_failures",
    Column("reason", SmallInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)
report_job_durations = _report_child(
    "report_job_durations",
    Column("duration", SmallInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)
# Jobs per printer family (reports from schema version 3 on; earlier ones have none).
report_printer_jobs = _report_child(
    "report_printer_jobs",
    Column("printer_type", SmallInteger, primary_key=True),
    Column("completed", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
)

# Installations that asked to be deleted: later reports for these IDs are refused.
tombstones = Table(
    "tombstones",
    metadata,
    Column("installation_id", ID, primary_key=True),
    Column("deleted_at", DateTime(timezone=True), nullable=False),
    Column("receipt_id", ID, nullable=False),
    Column("reports_deleted", Integer, nullable=False),
    # The installation's key, kept so that only its holder is told of the
    # deletion (and gets the receipt again). NULL: deleted by an operator
    # before it ever reported, or before tombstones kept keys; nobody holds it.
    Column("public_key", _binary(32), nullable=True),
)

# Operational counters (unknown enum values seen, reports refused by reason).
ingest_counters = Table(
    "ingest_counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# --- weekly rollups, kept by the rollup store (rollup_store.py) ----------------------------
# Sums over `reports`, kept current by adding the new reports' contributions and
# taking away the deleted ones', so dashboard queries read a few rows per week
# whatever the length of the history.

# Per week: installations active in it (a report for that week) and their job totals.
weekly_totals = Table(
    "weekly_totals",
    metadata,
    Column("week", Integer, primary_key=True),
    Column("active", Integer, nullable=False),
    Column("jobs_completed", BigInteger, nullable=False),
    Column("jobs_failed", BigInteger, nullable=False),
)

# Per week and value of a dimension (the API's Dimension numbers): active
# installations in the group (and, for printer types, the printers of that type
# across the group). A version's value is (major, minor, patch); other values
# use value_a only.
weekly_groups = Table(
    "weekly_groups",
    metadata,
    Column("week", Integer, primary_key=True),
    Column("dimension", SmallInteger, primary_key=True),
    Column("value_a", Integer, primary_key=True),
    Column("value_b", Integer, primary_key=True),
    Column("value_c", Integer, primary_key=True),
    Column("installations", Integer, nullable=False),
    Column("amount", BigInteger, nullable=False),
)

# Per week and value of a tally (rollup_store.Tally: features, errors, jobs,
# activity): what `installations` and `amount` are depends on the tally. Values
# as in weekly_groups; a tally per app version and something else (a feature, a
# failure reason...) keeps the version in a, b, c and the other value in d.
weekly_tallies = Table(
    "weekly_tallies",
    metadata,
    Column("week", Integer, primary_key=True),
    Column("tally", SmallInteger, primary_key=True),
    Column("value_a", Integer, primary_key=True),
    Column("value_b", Integer, primary_key=True),
    Column("value_c", Integer, primary_key=True),
    Column("value_d", Integer, primary_key=True),
    Column("installations", Integer, nullable=False),
    Column("amount", BigInteger, nullable=False),
)

# Per week and pair of dimensions (first < second, as API Dimension numbers):
# active installations in each combination of values, and printers when one
# of the two is the printer type. Values as in weekly_groups.
weekly_pairs = Table(
    "weekly_pairs",
    metadata,
    Column("week", Integer, primary_key=True),
    Column("first", SmallInteger, primary_key=True),
    Column("second", SmallInteger, primary_key=True),
    Column("first_a", Integer, primary_key=True),
    Column("first_b", Integer, primary_key=True),
    Column("first_c", Integer, primary_key=True),
    Column("second_a", Integer, primary_key=True),
    Column("second_b", Integer, primary_key=True),
    Column("second_c", Integer, primary_key=True),
    Column("installations", Integer, nullable=False),
    Column("amount", BigInteger, nullable=False),
)

# Installations by the week of their first report, counted once that week's
# report is rolled up.
weekly_new = Table(
    "weekly_new",
    metadata,
    Column("week", Integer, primary_key=True),
    Column("installations", Integer, nullable=False),
)

# Installations by the week of their newest report rolled up: those active in
# the last weeks are a sum of the last weeks' rows (no count of the fleet).
weekly_latest = Table(
    "weekly_latest",
    metadata,
    Column("week", Integer, primary_key=True),
    Column("installations", Integer, nullable=False),
)

# Reports received per week of arrival (not of their period): counted as new
# report rows are rolled up, so deletions later do not change the history (and
# a rebuild keeps it).
weekly_arrivals = Table(
    "weekly_arrivals",
    metadata,
    Column("week", Integer, primary_key=True),
    Column("reports", Integer, nullable=False),
)

# Where the rollups stand (one row, which writers of the rollups lock first):
# the newest report row they include, and whether the next refresh is to
# rebuild them whole (set by a migration that changes them).
rollup_state = Table(
    "rollup_state",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("last_report", BigInteger, nullable=False),
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
    Column("rebuild_requested", Boolean, nullable=False, server_default=false()),
)

# E-mail reports the analytics server has sent (or is sending): one row per
# kind (1 weekly, 2 monthly) and period (YYYYWW or YYYYMM), claimed before
# sending so that replicas and restarts send each report once.
email_reports = Table(
    "email_reports",
    metadata,
    Column("kind", SmallInteger, primary_key=True),
    Column("period", Integer, primary_key=True),
    Column("sent_at", DateTime(timezone=True), nullable=False),
)
