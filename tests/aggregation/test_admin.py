"""The aggregation server's admin API and its call limits, over real TLS on
SQLite and PostgreSQL: admin calls need the admin token (an installation's key
is no substitute), the counters count, an operator's deletion leaves a
tombstone, and the in-memory limits answer RESOURCE_EXHAUSTED with a delay."""

from __future__ import annotations

import datetime as dt
import os
import stat
import uuid
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import ingest_admin_service_pb2, ingest_service_pb2
from printernizer_stats.aggregation.servicer import CallLimiter
from printernizer_stats.common.admin import (
    AdminTokenError,
    bearer_metadata,
    ensure_token_file,
    read_token_file,
)
from printernizer_stats.common.errors import field_violations, retry_delay
from printernizer_stats.common.weeks import Week

from .. import databases
from .conftest import (
    ADMIN_TOKEN,
    TIMEOUT,
    Installation,
    OffsetClock,
    RunningServer,
    report_of,
    rpc_error,
    running_server,
    unknown_field,
)

database_url = databases.database_url

ADMIN = bearer_metadata(ADMIN_TOKEN)
W44, W45, W46 = Week(2026, 44), Week(2026, 45), Week(2026, 46)
Counter = ingest_admin_service_pb2.IngestCounter


def counters(status: ingest_admin_service_pb2.GetIngestStatusResponse) -> dict[int, int]:
    return {entry.counter: entry.value for entry in status.counters}


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-token-" + "y" * 32),),
        (("authorization", ADMIN_TOKEN),),  # no scheme
        (("authorization", f"Bearer {ADMIN_TOKEN} "),),
    ],
    ids=["none", "wrong", "no-scheme", "trailing-space"],
)
async def test_admin_calls_without_the_token_are_unauthenticated(
    server: RunningServer, metadata: tuple[tuple[str, str], ...]
) -> None:
    victim = Installation(uuid.uuid4().bytes)
    await server.stub.SubmitReports(victim.submission(report_of(victim, W46)), timeout=TIMEOUT)
    for call in (
        server.admin.GetIngestStatus(ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=metadata),
        server.admin.DeleteInstallationAsOperator(
            ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest(
                installation_id=victim.installation_id
            ),
            metadata=metadata,
        ),
        server.admin.PurgeExpiredReports(
            ingest_admin_service_pb2.PurgeExpiredReportsRequest(), metadata=metadata
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.UNAUTHENTICATED
    status = await server.admin.GetIngestStatus(
        ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN
    )
    assert (status.installations, status.reports, status.tombstones) == (1, 1, 0)  # nothing was deleted


async def test_the_ingest_api_needs_no_admin_token_and_the_token_signs_nothing(server: RunningServer) -> None:
    agent = Installation(uuid.uuid4().bytes)
    accepted = await server.stub.SubmitReports(agent.submission(report_of(agent, W46)), timeout=TIMEOUT)
    assert accepted.receipts[0].status == ingest_service_pb2.RECEIPT_STATUS_ACCEPTED
    # Someone holding the admin token but not the installation's key cannot delete through ingest.
    intruder = Installation(agent.installation_id)
    refused = await rpc_error(
        server.stub.DeleteInstallation(intruder.deletion(), metadata=ADMIN, timeout=TIMEOUT)
    )
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_status_and_counters(server: RunningServer) -> None:
    first, second = Installation(uuid.uuid4().bytes), Installation(uuid.uuid4().bytes)
    empty = await server.admin.GetIngestStatus(
        ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN
    )
    assert (empty.installations, empty.reports, empty.HasField("oldest_week")) == (0, 0, False)
    assert set(counters(empty)) == set(Counter.values()) - {Counter.INGEST_COUNTER_UNSPECIFIED}
    assert set(counters(empty).values()) == {0}

    newer = report_of(first, W45)
    newer.installation.platform = 77  # type: ignore[assignment]  # a value from a newer agent
    # ... and a field from a newer agent: discarded, counted once (not again on the replay).
    submission = first.submission(
        newer.SerializeToString() + unknown_field(90, b"\x01"), report_of(first, W46)
    )
    await server.stub.SubmitReports(submission, timeout=TIMEOUT)
    await server.stub.SubmitReports(submission, timeout=TIMEOUT)  # a replay: two duplicates
    limited = await rpc_error(
        server.stub.SubmitReports(first.submission(report_of(first, W44)), timeout=TIMEOUT)
    )
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await server.stub.SubmitReports(second.submission(report_of(second, W46)), timeout=TIMEOUT)
    await server.stub.DeleteInstallation(second.deletion(), timeout=TIMEOUT)

    status = await server.admin.GetIngestStatus(
        ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN
    )
    assert (status.installations, status.reports, status.tombstones) == (1, 2, 1)
    assert (Week.from_proto(status.oldest_week), Week.from_proto(status.newest_week)) == (W45, W46)
    assert counters(status) == {
        Counter.INGEST_COUNTER_REPORTS_DUPLICATE: 2,
        Counter.INGEST_COUNTER_UNKNOWN_ENUM_VALUES: 1,
        Counter.INGEST_COUNTER_SUBMISSIONS_RATE_LIMITED: 1,
        Counter.INGEST_COUNTER_INSTALLATIONS_DELETED: 1,
        Counter.INGEST_COUNTER_INSTALLATIONS_DELETED_BY_OPERATOR: 0,
        Counter.INGEST_COUNTER_REPORTS_EXPIRED: 0,
        Counter.INGEST_COUNTER_REPORTS_WITH_UNKNOWN_FIELDS: 1,
    }


async def test_an_operator_deletion_leaves_a_tombstone(server: RunningServer) -> None:
    agent = Installation(uuid.uuid4().bytes)
    await server.stub.SubmitReports(
        agent.submission(report_of(agent, W45), report_of(agent, W46)), timeout=TIMEOUT
    )
    request = ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest(
        installation_id=agent.installation_id
    )
    deleted = await server.admin.DeleteInstallationAsOperator(request, metadata=ADMIN, timeout=TIMEOUT)
    assert (deleted.receipt.installation_id, deleted.receipt.reports_deleted) == (agent.installation_id, 2)
    again = await server.admin.DeleteInstallationAsOperator(request, metadata=ADMIN, timeout=TIMEOUT)
    assert again.receipt.receipt_id == deleted.receipt.receipt_id
    refused = await rpc_error(
        server.stub.SubmitReports(agent.submission(report_of(agent, W44)), timeout=TIMEOUT)
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    status = await server.admin.GetIngestStatus(
        ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN
    )
    assert counters(status)[Counter.INGEST_COUNTER_INSTALLATIONS_DELETED_BY_OPERATOR] == 1
    for malformed in (b"short", uuid.uuid1().bytes):  # not a version-4 UUID
        bad = await rpc_error(
            server.admin.DeleteInstallationAsOperator(
                ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest(installation_id=malformed),
                metadata=ADMIN,
            )
        )
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in field_violations(bad)] == ["installation_id"]


async def test_retention_can_be_run_now(database_url: str, tmp_path: Path) -> None:
    clock = OffsetClock()
    async with running_server(database_url, tmp_path, clock=clock, retention_days=14) as server:
        old_week = Week.containing(dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
        recent_week = Week.containing(dt.datetime.now(dt.UTC)).previous()
        # The server's own retention job takes its first turn as it starts, beside serving, and may
        # come after the expired report is stored (then it deletes it itself); its next turn is an
        # interval away, so a second installation's expired report is left to the call.
        for installations in (1, 2):  # noqa: B007 - how many there are, read after the loop
            agent = Installation(uuid.uuid4().bytes)
            # Stored while it was recent; three weeks on it is older than retention keeps.
            clock.offset = -dt.timedelta(days=21)
            await server.stub.SubmitReports(agent.submission(report_of(agent, old_week)), timeout=TIMEOUT)
            clock.offset = dt.timedelta()
            await server.stub.SubmitReports(agent.submission(report_of(agent, recent_week)), timeout=TIMEOUT)
            purged = await server.admin.PurgeExpiredReports(
                ingest_admin_service_pb2.PurgeExpiredReportsRequest(), metadata=ADMIN, timeout=TIMEOUT
            )
            assert old_week < Week.from_proto(purged.cutoff) <= recent_week
            if purged.reports_deleted == 1:
                break
            assert purged.reports_deleted == 0  # the job had deleted it
        else:
            pytest.fail("the call deleted no expired report")
        status = await server.admin.GetIngestStatus(
            ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN
        )
        # Every installation's recent report is kept, every expired one is gone, each counted once.
        assert (status.reports, Week.from_proto(status.oldest_week)) == (installations, recent_week)
        assert counters(status)[Counter.INGEST_COUNTER_REPORTS_EXPIRED] == installations


async def test_without_a_token_the_admin_api_is_not_served(database_url: str, tmp_path: Path) -> None:
    async with running_server(database_url, tmp_path, admin_token=None) as server:
        missing = await rpc_error(
            server.admin.GetIngestStatus(ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN)
        )
    assert missing.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_global_limit_holds_across_peers(database_url: str, tmp_path: Path) -> None:
    async with running_server(
        database_url, tmp_path, peer_calls_per_second=0, global_calls_per_second=0.5
    ) as server:
        # A burst of four seconds' worth (2 calls), then the limit.
        for _ in range(2):
            agent = Installation(uuid.uuid4().bytes)
            await server.stub.SubmitReports(agent.submission(report_of(agent, W46)), timeout=TIMEOUT)
        agent = Installation(uuid.uuid4().bytes)
        limited = await rpc_error(
            server.stub.SubmitReports(agent.submission(report_of(agent, W46)), timeout=TIMEOUT)
        )
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay(limited)
    assert delay is not None
    assert dt.timedelta(0) < delay <= dt.timedelta(seconds=2)


def test_the_limiter_per_peer_globally_and_bounded() -> None:
    limiter = CallLimiter(peer_rate=1, peer_burst=2, global_rate=10, global_burst=3, capacity=2)
    assert [limiter.wait_needed("a", now=0.0).seconds for _ in range(3)] == [0.0, 0.0, 1.0]  # a's burst is 2
    assert limiter.wait_needed("b", now=0.0).seconds == 0.0  # the third call overall
    assert limiter.wait_needed("c", now=0.0) == (pytest.approx(0.1), "global")  # the global burst is spent
    assert limiter.peers_remembered == 2  # the oldest peer was forgotten
    assert limiter.wait_needed("a", now=1.0).seconds == 0.0  # refilled
    unlimited = CallLimiter(peer_rate=0, global_rate=0)
    assert all(unlimited.wait_needed("a", now=0.0).seconds == 0.0 for _ in range(1000))
    assert unlimited.peers_remembered == 0


def test_the_admin_token_file_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "admin-token"
    token = ensure_token_file(path)
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ensure_token_file(path) == token  # made once, then read
    path.write_text("short\n")
    with pytest.raises(AdminTokenError, match="at least 32"):
        read_token_file(path)
    with pytest.raises(AdminTokenError, match="cannot read"):
        read_token_file(tmp_path / "missing")
