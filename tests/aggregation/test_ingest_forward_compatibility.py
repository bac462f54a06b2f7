"""Reports from a newer agent: enum values this server does not know, several
in one list, are accepted (never INTERNAL), stored as OTHER (or UNSPECIFIED),
merged where they now share a key, counted, and never stored raw. A value the
contract added after the report's schema version is treated the same way: the
user did not consent to it.

Hypothesis generates such reports: known and unknown values mixed in every
list and every scalar enum, counts up to the validation maxima. The
properties are checked on the domain functions (many examples, no I/O) and
through the real server over TLS on SQLite and PostgreSQL, against an oracle
written independently of the server's code."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import EnumDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import (
    aggregated_stats_pb2,
    common_pb2,
    country_pb2,
    ingest_admin_service_pb2,
    options_pb2,
)
from printernizer_stats.aggregation.validation import MAX_WEEKLY_COUNT, check_report, normalise_unknown_values
from printernizer_stats.common import consent_levels
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.limits import MAX_PRINTERS_PER_TYPE
from printernizer_stats.store import schema
from printernizer_stats.store.database import create_sync_engine
from sqlalchemy import select

from .. import databases
from .conftest import (
    ADMIN_TOKEN,
    FIRST_KEPT,
    INSTALLATION,
    LAST_WEEK,
    NOW,
    TIMEOUT,
    Installation,
    RunningServer,
    running_server,
    valid_report,
)

database_url = databases.database_url
ADMIN = bearer_metadata(ADMIN_TOKEN)
Report = aggregated_stats_pb2.AggregatedStats
ENUMS: dict[str, EnumDescriptor] = {
    "printer_type": common_pb2.PrinterType.DESCRIPTOR,
    "feature": common_pb2.Feature.DESCRIPTOR,
    "error_type": common_pb2.ErrorType.DESCRIPTOR,
    "component": common_pb2.Component.DESCRIPTOR,
    "reason": common_pb2.JobFailureReason.DESCRIPTOR,
    "duration": common_pb2.JobDurationBucket.DESCRIPTOR,
    "platform": common_pb2.Platform.DESCRIPTOR,
    "architecture": common_pb2.CpuArchitecture.DESCRIPTOR,
    "deployment_mode": common_pb2.DeploymentMode.DESCRIPTOR,
    "country": country_pb2.Country.DESCRIPTOR,
}
# Lists the same oracle builds: (list, key fields, the most one entry may count).
LISTS = {
    "printers": (("printer_type",), MAX_PRINTERS_PER_TYPE),
    "errors": (("error_type", "component"), MAX_WEEKLY_COUNT),
    "job_failures": (("reason",), None),
    "job_durations": (("duration",), None),
}


SCHEMA_VERSIONS = sorted(v for v in aggregated_stats_pb2.ReportSchemaVersion.values() if v)


def known(enum: EnumDescriptor, value: int, schema_version: int | None = None) -> bool:
    """A value of the contract; with `schema_version`, one a report of that
    version may carry (introduced in it or before, as the value declares)."""
    defined = enum.values_by_number.get(value)
    if defined is None:
        return False
    introduced = defined.GetOptions().Extensions[options_pb2.value_since_schema_version] or 1
    return schema_version is None or introduced <= schema_version


def fallback(enum: EnumDescriptor) -> int:
    """What the contract says an unknown value is counted as: OTHER, else UNSPECIFIED."""
    return next((v.number for v in enum.values if v.name.endswith("_OTHER")), 0)


def values(enum: EnumDescriptor) -> st.SearchStrategy[int]:
    """Known values and values a newer contract may add (enums are int32 on the wire)."""
    newer = st.integers(-(2**31), 2**31 - 1).filter(lambda v: not known(enum, v))
    return st.one_of(st.sampled_from(sorted(enum.values_by_number)), newer, st.integers(1, 200))


def keyed(
    fields: tuple[str, ...], counts: st.SearchStrategy[int], max_size: int
) -> st.SearchStrategy[list[tuple[tuple[int, ...], int]]]:
    """Entries with keys unique as sent (a newer agent never repeats one)."""
    key = st.tuples(*(values(ENUMS[f]) for f in fields))
    return st.lists(st.tuples(key, counts), max_size=max_size, unique_by=lambda entry: entry[0])


@st.composite
def newer_reports(draw: st.DrawFn) -> Report:
    """A valid report as a newer agent might send it for LAST_WEEK."""
    report = valid_report(LAST_WEEK)
    report.schema_version = draw(st.sampled_from(SCHEMA_VERSIONS))  # type: ignore[assignment]
    for name in ("platform", "architecture", "deployment_mode", "country"):
        setattr(report.installation, name, draw(values(ENUMS[name])))
    report.printer_fleet.ClearField("printers")
    for (printer_type,), count in draw(keyed(("printer_type",), st.integers(1, MAX_PRINTERS_PER_TYPE), 12)):
        report.printer_fleet.printers.add(printer_type=printer_type, count=count)  # type: ignore[arg-type]
    report.ClearField("features")
    features = draw(st.lists(values(ENUMS["feature"]), max_size=16, unique=True))
    for feature in features:
        report.features.add(feature=feature, enabled=draw(st.booleans()))  # type: ignore[arg-type]
    report.ClearField("errors")
    for (error_type, component), count in draw(
        keyed(("error_type", "component"), st.integers(1, MAX_WEEKLY_COUNT), 12)
    ):
        report.errors.add(error_type=error_type, component=component, count=count)  # type: ignore[arg-type]
    usage = report.usage
    usage.ClearField("job_failures")
    for (reason,), count in draw(keyed(("reason",), st.integers(0, MAX_WEEKLY_COUNT // 10), 10)):
        usage.job_failures.add(reason=reason, count=count)  # type: ignore[arg-type]
    usage.ClearField("completed_job_durations")
    for (duration,), count in draw(keyed(("duration",), st.integers(0, MAX_WEEKLY_COUNT // 10), 10)):
        usage.completed_job_durations.add(duration=duration, count=count)  # type: ignore[arg-type]
    usage.jobs_failed = sum(f.count for f in usage.job_failures)
    usage.jobs_completed = sum(d.count for d in usage.completed_job_durations)
    if report.schema_version >= consent_levels.SINCE_SCHEMA_VERSION:
        report.consent_level = consent_levels.EVERYTHING  # it holds every part
        # The jobs spread over families (unique as sent), adding up to the jobs.
        families = draw(st.lists(values(ENUMS["printer_type"]), min_size=1, max_size=5, unique=True))
        jobs = {family: [0, 0] for family in families}
        for outcome, total in enumerate((usage.jobs_completed, usage.jobs_failed)):
            for family in families[:-1]:
                jobs[family][outcome] = draw(st.integers(0, total))
                total -= jobs[family][outcome]
            jobs[families[-1]][outcome] = total
        for family, (completed, failed) in jobs.items():
            if completed or failed:
                usage.jobs_by_printer_type.add(printer_type=family, completed=completed, failed=failed)  # type: ignore[arg-type]
    return report


def unknown_values_in(report: Report) -> int:
    info = report.installation
    scalars = [
        (name, getattr(info, name)) for name in ("platform", "architecture", "deployment_mode", "country")
    ]
    entries = [
        *(("printer_type", p.printer_type) for p in report.printer_fleet.printers),
        *(("feature", f.feature) for f in report.features),
        *(pair for e in report.errors for pair in (("error_type", e.error_type), ("component", e.component))),
        *(("reason", f.reason) for f in report.usage.job_failures),
        *(("duration", d.duration) for d in report.usage.completed_job_durations),
        *(("printer_type", j.printer_type) for j in report.usage.jobs_by_printer_type),
    ]
    version = report.schema_version
    return sum(not known(ENUMS[name], value, version) for name, value in scalars + entries)


def expected_lists(report: Report) -> dict[str, Counter[tuple[int, ...]]]:
    """The oracle: what the server must store for a newer agent's report."""

    version = report.schema_version

    def normal(name: str, value: int) -> int:
        return value if known(ENUMS[name], value, version) else fallback(ENUMS[name])

    def merged(entries: Iterable[tuple[tuple[int, ...], int]], most: int | None) -> Counter[tuple[int, ...]]:
        totals: Counter[tuple[int, ...]] = Counter()
        for key, count in entries:
            totals[key] += count
        return Counter({(*key, min(total, most) if most else total): 1 for key, total in totals.items()})

    usage = report.usage
    # Jobs per family carry two counts, each summed where families merge (never clamped).
    by_family: dict[int, tuple[int, int]] = {}
    for j in usage.jobs_by_printer_type:
        family = normal("printer_type", j.printer_type)
        completed, failed = by_family.get(family, (0, 0))
        by_family[family] = (completed + j.completed, failed + j.failed)
    jobs_by_printer_merged = Counter({(family, *jobs): 1 for family, jobs in by_family.items()})
    return {
        "printers": merged(
            (((normal("printer_type", p.printer_type),), p.count) for p in report.printer_fleet.printers),
            MAX_PRINTERS_PER_TYPE,
        ),
        "features": Counter(
            (f.feature, int(f.enabled))
            for f in report.features
            if known(ENUMS["feature"], f.feature, version)
        ),
        "errors": merged(
            (
                ((normal("error_type", e.error_type), normal("component", e.component)), e.count)
                for e in report.errors
            ),
            MAX_WEEKLY_COUNT,
        ),
        "job_failures": merged((((normal("reason", f.reason),), f.count) for f in usage.job_failures), None),
        "job_durations": merged(
            (((normal("duration", d.duration),), d.count) for d in usage.completed_job_durations), None
        ),
        "jobs_by_printer": jobs_by_printer_merged,
    }


def lists_of(report: Report) -> dict[str, Counter[tuple[int, ...]]]:
    usage = report.usage
    return {
        "printers": Counter((p.printer_type, p.count) for p in report.printer_fleet.printers),
        "features": Counter((f.feature, int(f.enabled)) for f in report.features),
        "errors": Counter((e.error_type, e.component, e.count) for e in report.errors),
        "job_failures": Counter((f.reason, f.count) for f in usage.job_failures),
        "job_durations": Counter((d.duration, d.count) for d in usage.completed_job_durations),
        "jobs_by_printer": Counter(
            (j.printer_type, j.completed, j.failed) for j in usage.jobs_by_printer_type
        ),
    }


@settings(max_examples=150, deadline=None)
@given(newer_reports())
def test_a_newer_agents_report_normalises_to_one_the_checks_accept(report: Report) -> None:
    assert check_report(report, INSTALLATION, NOW, FIRST_KEPT) == []  # as sent: keys unique
    expected, unknown = expected_lists(report), unknown_values_in(report)
    assert normalise_unknown_values(report) == unknown
    assert lists_of(report) == expected
    # What the checks established still holds: sums add up, counts within
    # bounds, keys unique; and nothing unknown is left.
    assert check_report(report, INSTALLATION, NOW, FIRST_KEPT) == []
    assert unknown_values_in(report) == 0


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(database_url, tmp_path, peer_calls_per_second=0) as running:
        yield running


def stored_lists(database_url: str, report: bytes) -> dict[str, Counter[tuple[int, ...]]]:
    tables = {
        "printers": (schema.report_printers, ("printer_type", "count")),
        "features": (schema.report_features, ("feature", "enabled")),
        "errors": (schema.report_errors, ("error_type", "component", "count")),
        "job_failures": (schema.report_job_failures, ("reason", "count")),
        "job_durations": (schema.report_job_durations, ("duration", "count")),
        "jobs_by_printer": (schema.report_printer_jobs, ("printer_type", "completed", "failed")),
    }
    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(select(schema.reports.c.id).where(schema.reports.c.report_id == report))
            key = row.scalar_one()
            return {
                name: Counter(
                    tuple(int(value) for value in found)
                    for found in connection.execute(
                        select(*(table.c[c] for c in columns)).where(table.c.report == key)
                    )
                )
                for name, (table, columns) in tables.items()
            }
    finally:
        engine.dispose()


async def unknown_values_counted(server: RunningServer) -> int:
    status = await server.admin.GetIngestStatus(
        ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN, timeout=TIMEOUT
    )
    counted = {c.counter: c.value for c in status.counters}
    return counted[ingest_admin_service_pb2.INGEST_COUNTER_UNKNOWN_ENUM_VALUES]


def as_sent_by(agent: Installation, report: Report) -> Report:
    """The report with `agent`'s identifiers."""
    own = Report()
    own.CopyFrom(report)
    own.installation.installation_id = agent.installation_id
    own.report_id = report_id(agent.installation_id, LAST_WEEK)
    return own


async def test_several_unknown_values_in_one_list_are_merged_not_refused(server: RunningServer) -> None:
    """The case that failed: two values this server does not know become OTHER
    in the same list (the insert broke on the list's primary key)."""
    report = valid_report(LAST_WEEK)
    api = common_pb2.COMPONENT_API
    report.errors.add(error_type=common_pb2.ERROR_TYPE_OTHER, component=api, count=MAX_WEEKLY_COUNT - 1)
    report.errors.add(error_type=901, component=api, count=5)  # type: ignore[arg-type]
    report.errors.add(error_type=902, component=api, count=7)  # type: ignore[arg-type]
    report.printer_fleet.printers.add(printer_type=801, count=3)  # type: ignore[arg-type]
    report.printer_fleet.printers.add(printer_type=802, count=4)  # type: ignore[arg-type]
    report.features.add(feature=701, enabled=True)  # type: ignore[arg-type]
    report.features.add(feature=702, enabled=False)  # type: ignore[arg-type]
    report.usage.job_failures.add(reason=601, count=1)  # type: ignore[arg-type]
    report.usage.job_failures.add(reason=602, count=2)  # type: ignore[arg-type]
    report.usage.completed_job_durations.add(duration=501, count=4)  # type: ignore[arg-type]
    report.usage.completed_job_durations.add(duration=502, count=5)  # type: ignore[arg-type]
    report.usage.jobs_failed += 3
    report.usage.jobs_completed += 9
    agent = Installation(uuid.uuid4().bytes)
    sent = as_sent_by(agent, report)
    before = await unknown_values_counted(server)
    answer = await server.stub.SubmitReports(agent.submission(sent), timeout=TIMEOUT)
    assert len(answer.receipts) == 1
    stored = stored_lists(server.database_url, sent.report_id)
    assert stored["errors"] == Counter(
        {
            (common_pb2.ERROR_TYPE_TIMEOUT, api, 4): 1,  # valid_report's own entry, untouched
            (common_pb2.ERROR_TYPE_OTHER, api, MAX_WEEKLY_COUNT): 1,  # 999,999 + 5 + 7, clamped
        }
    )
    assert stored["printers"] == Counter(
        {(common_pb2.PRINTER_TYPE_PRUSA, 2): 1, (common_pb2.PRINTER_TYPE_OTHER, 7): 1}
    )
    assert stored["features"] == Counter({(common_pb2.FEATURE_LIBRARY, 1): 1})  # unknown ones dropped
    assert stored["job_failures"] == Counter(
        {(common_pb2.JOB_FAILURE_REASON_CANCELLED, 2): 1, (common_pb2.JOB_FAILURE_REASON_OTHER, 3): 1}
    )
    assert stored["job_durations"] == Counter(
        {
            (common_pb2.JOB_DURATION_BUCKET_UNDER_1_HOUR, 3): 1,
            (common_pb2.JOB_DURATION_BUCKET_UNSPECIFIED, 9): 1,
        }
    )
    assert await unknown_values_counted(server) == before + 10


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(report=newer_reports())
async def test_every_newer_agents_report_is_stored_as_the_contract_says(
    server: RunningServer, report: Report
) -> None:
    agent = Installation(uuid.uuid4().bytes)  # each example is an installation of its own
    sent = as_sent_by(agent, report)
    before = await unknown_values_counted(server)
    try:
        await server.stub.SubmitReports(agent.submission(sent), timeout=TIMEOUT)
    except grpc.aio.AioRpcError as error:
        pytest.fail(f"a newer agent's report was refused: {error.code()} {error.details()}")
    assert stored_lists(server.database_url, sent.report_id) == expected_lists(sent)
    assert await unknown_values_counted(server) == before + unknown_values_in(sent)
