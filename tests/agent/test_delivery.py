"""Agent -> TLS -> aggregation server -> database, end to end: delivery, the
ledger, a lost response, refusals, a server that is down, and the deletion
request after opting out. The agent runs on a fake clock in a past week; the
server is the real one, in process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import agent_service_pb2, ingest_service_pb2
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import LOCAL_ONLY, SHARING, Override
from printernizer_stats.agent.delivery import Backoff, Courier, Uplink, deliver
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.weeks import Week

from .. import agent_harness
from ..agent_harness import FakeClock, job_created
from ..aggregation.conftest import RunningServer, database_url, server  # noqa: F401 - fixtures
from .conftest import stored_on_server

W = Week(2026, 40)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[StatsAgent]:
    clock = FakeClock(W.start + dt.timedelta(days=1))
    # The agent lives in a past week while the server runs on the real time: its
    # clock is taken as kept right, so the server's time does not overrule it.
    clock.time_service = True
    store = await AgentStore.open(tmp_path / "agent.db")
    opened = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
    await opened.set_consent(SHARING, 1)
    clock.now += dt.timedelta(hours=1)
    await opened.record([job_created(clock.now), job_created(clock.now)], 0)
    clock.now = W.end + dt.timedelta(hours=3)
    assert await opened.queue_finished_weeks() == 1
    yield opened
    await store.close()


@pytest.fixture
async def uplink(server: RunningServer, tmp_path: Path) -> AsyncIterator[Uplink]:  # noqa: F811
    ca = tmp_path / "ca.crt"
    ca.write_bytes(server.ca)
    opened = Uplink(f"localhost:{server.port}", str(ca))
    yield opened
    await opened.close()


async def test_a_finished_week_reaches_the_server_and_the_ledger(
    agent: StatsAgent,
    uplink: Uplink,
    server: RunningServer,  # noqa: F811
) -> None:
    (queued,) = await agent.store.outbox()
    delivery = await deliver(agent, uplink)
    assert delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED
    assert [r.status for r in delivery.receipts] == [ingest_service_pb2.RECEIPT_STATUS_ACCEPTED]
    assert await agent.store.outbox() == []
    (sent,) = await agent.ledger(0)
    assert sent.report == queued.report  # the ledger holds the exact bytes sent
    assert sent.receipt.receipt_id == delivery.receipts[0].receipt_id
    assert stored_on_server(server) == 1
    status = await agent.status()
    assert (status.last_outcome, status.queued_reports) == (agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED, 0)


async def test_a_lost_response_is_answered_with_the_original_receipt(
    agent: StatsAgent,
    uplink: Uplink,
    server: RunningServer,  # noqa: F811
) -> None:
    (queued,) = await agent.store.outbox()
    first = await deliver(agent, uplink)
    # The agent never saw that answer: the report is still queued when it retries.
    await agent.store.queue_report(queued, 60, 600_000)
    retry = await deliver(agent, uplink)
    assert [r.status for r in retry.receipts] == [ingest_service_pb2.RECEIPT_STATUS_DUPLICATE]
    assert retry.receipts[0].receipt_id == first.receipts[0].receipt_id
    assert stored_on_server(server) == 1


async def test_a_refused_report_is_dropped_with_the_reason(
    agent: StatsAgent,
    uplink: Uplink,
    server: RunningServer,  # noqa: F811
) -> None:
    (queued,) = await agent.store.outbox()
    with sqlite3.connect(agent.store.path) as db:  # a signature the server cannot verify
        db.execute("UPDATE outbox SET signature = ? WHERE week = ?", (bytes(64), queued.week))
    db.close()
    delivery = await deliver(agent, uplink)
    assert (delivery.outcome, delivery.failure_code) == (
        agent_service_pb2.DELIVERY_OUTCOME_DROPPED,
        "UNAUTHENTICATED",
    )
    assert await agent.store.outbox() == []
    assert await agent.queue_finished_weeks() == 0  # given up: not rebuilt and refused every hour
    status = await agent.status()
    assert (status.last_outcome, status.last_failure_code, status.dropped_reports) == (
        agent_service_pb2.DELIVERY_OUTCOME_DROPPED,
        "UNAUTHENTICATED",
        1,
    )
    assert stored_on_server(server) == 0


async def test_a_server_that_is_down_leaves_the_outbox_for_later(agent: StatsAgent, tmp_path: Path) -> None:
    uplink = Uplink("localhost:1")  # nothing listens there
    try:
        delivery = await deliver(agent, uplink)
    finally:
        await uplink.close()
    assert (delivery.outcome, delivery.failure_code) == (
        agent_service_pb2.DELIVERY_OUTCOME_RETRYING,
        "UNAVAILABLE",
    )
    assert len(await agent.store.outbox()) == 1


async def test_the_hourly_rule_comes_back_with_a_retry_delay(agent: StatsAgent, uplink: Uplink) -> None:
    await deliver(agent, uplink)
    agent.clock.now += dt.timedelta(weeks=1)  # type: ignore[attr-defined]
    assert await agent.queue_finished_weeks() == 1
    delivery = await deliver(agent, uplink)  # the server's clock says: within the hour
    assert delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_RETRYING
    assert delivery.failure_code == "RESOURCE_EXHAUSTED"
    assert delivery.retry_after is not None
    assert dt.timedelta(minutes=59) < delivery.retry_after <= dt.timedelta(hours=1)
    assert len(await agent.store.outbox()) == 1


async def test_opting_out_sends_a_signed_deletion_request_until_confirmed(
    agent: StatsAgent,
    uplink: Uplink,
    server: RunningServer,  # noqa: F811
) -> None:
    await deliver(agent, uplink)
    assert stored_on_server(server) == 1
    await agent.set_consent(LOCAL_ONLY, 0)
    await deliver(agent, uplink)
    assert stored_on_server(server) == 0
    (receipt,) = await agent.deletion_receipts()
    assert receipt.reports_deleted == 1
    await deliver(agent, uplink)  # confirmed: not sent again
    assert len(await agent.deletion_receipts()) == 1


async def test_the_agent_server_sends_the_deletion_request_as_soon_as_the_user_opts_out(
    server: RunningServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Through the agent's own API on its socket, with --server configured."""
    ca = tmp_path / "ca.crt"
    ca.write_bytes(server.ca)
    short = tempfile.TemporaryDirectory(dir="/tmp", prefix="dlv-")  # Unix socket paths are short
    base = Path(short.name)
    base.chmod(0o700)
    config = dataclasses.replace(
        agent_harness.make_config(base), server_address=f"localhost:{server.port}", ca_file=str(ca)
    )
    async with agent_harness.running_agent(config) as agent:
        await agent.opt_in()
        nothing = await agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=10)
        assert list(nothing.receipts) == []  # no finished week since opting in
        await agent.opt_out()
        for _ in range(100):
            ledger = await agent.stub.ListSentReports(agent_service_pb2.ListSentReportsRequest(), timeout=10)
            if ledger.deletion_receipts:
                break
            await asyncio.sleep(0.1)
        (receipt,) = ledger.deletion_receipts
        assert receipt.reports_deleted == 0
        assert len(receipt.receipt_id) == 16
        with pytest.raises(grpc.aio.AioRpcError) as not_sharing:
            await agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=10)
        assert not_sharing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    short.cleanup()


def test_backoff_grows_with_jitter_to_a_cap_and_gives_up() -> None:
    import random

    backoff = Backoff()
    rng = random.Random(1)
    delays = [backoff.next_delay(rng) for _ in range(backoff.give_up_after)]
    seconds = [d.total_seconds() for d in delays if d is not None]
    assert len(seconds) == backoff.give_up_after
    assert 4.0 <= seconds[0] <= 6.0  # 5 s +/- 20 %
    assert all(s <= 30 * 1.2 for s in seconds)  # capped
    assert seconds[-1] > seconds[0] * 3  # grew
    assert backoff.next_delay(rng) is None  # gave up
    backoff.reset()
    assert backoff.next_delay(rng) is not None


async def test_a_server_that_stays_down_is_retried_with_backoff_then_hourly(agent: StatsAgent) -> None:
    clock = agent.clock
    clock.now = W.end + dt.timedelta(hours=25)  # type: ignore[attr-defined]  # past the week's due time
    courier = Courier(agent, Uplink("localhost:1"))  # nothing listens there
    try:
        waits = []
        for _ in range(Backoff().give_up_after + 2):
            await courier.tick()
            assert courier.next_attempt is not None
            waits.append(courier.next_attempt - clock())
            clock.now = courier.next_attempt  # type: ignore[attr-defined]
        assert dt.timedelta(seconds=4) <= waits[0] <= dt.timedelta(seconds=6)
        assert waits[1] > waits[0]
        assert waits[-2:] == [dt.timedelta(hours=1)] * 2  # gave up: hourly, not another burst
        assert len(await agent.store.outbox()) == 1  # nothing lost
        status = await agent.status()
        assert (status.last_outcome, status.last_failure_code) == (
            agent_service_pb2.DELIVERY_OUTCOME_RETRYING,
            "UNAVAILABLE",
        )
    finally:
        await courier.uplink.close()  # type: ignore[union-attr]


class AnswersWithoutReceipts(Uplink):
    """The real server's answer, with its receipts taken away on the way back,
    as a broken proxy or a server of another version might answer."""

    async def submit(
        self, request: ingest_service_pb2.SubmitReportsRequest
    ) -> ingest_service_pb2.SubmitReportsResponse:
        answer = await super().submit(request)
        del answer.receipts[:]
        return answer


async def test_an_answer_without_the_receipts_keeps_the_reports_queued(
    agent: StatsAgent,
    server: RunningServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(server.ca)
    broken = AnswersWithoutReceipts(f"localhost:{server.port}", str(ca))
    try:
        delivery = await deliver(agent, broken)
    finally:
        await broken.close()
    retrying = (agent_service_pb2.DELIVERY_OUTCOME_RETRYING, "UNKNOWN")
    assert (delivery.outcome, delivery.failure_code) == retrying
    (queued,) = await agent.store.outbox()
    assert queued.server_errors == 1
    assert await agent.ledger(0) == []
    # The server did store it: the next delivery gets its original receipt.
    agent.clock.now += dt.timedelta(hours=2)  # type: ignore[attr-defined]
    uplink = Uplink(f"localhost:{server.port}", str(ca))
    try:
        delivery = await deliver(agent, uplink)
    finally:
        await uplink.close()
    assert delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED
    assert [r.status for r in delivery.receipts] == [ingest_service_pb2.RECEIPT_STATUS_DUPLICATE]
    assert len(await agent.ledger(0)) == 1
    assert stored_on_server(server) == 1
