"""The ingest API's rules (signatures, sizes, validation, refusals) on the real
store, on SQLite and PostgreSQL; the TLS transport comes on top of this."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from printernizer.stats.v1 import common_pb2, ingest_service_pb2
from printernizer_stats.aggregation.ingest import MAX_REPORTS_PER_SUBMISSION, Ingest
from printernizer_stats.common.refusals import FieldError, Unauthenticated
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import schema
from printernizer_stats.store.ingest_store import IngestStore
from printernizer_stats.store.refusals import Forbidden, TooManySubmissions
from sqlalchemy import select

from .. import databases
from ..agent_harness import FakeClock
from .conftest import INSTALLATION, NOW, Installation, valid_report

database_url = databases.database_url
W45, W46 = Week(2026, 45), Week(2026, 46)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def ingest(database_url: str, clock: FakeClock) -> AsyncIterator[Ingest]:
    databases.upgrade(database_url)
    store = IngestStore.open(database_url)
    yield Ingest(store, clock=clock)
    await store.close()


async def stored_reports(ingest: Ingest) -> int:
    async with ingest.store.engine.connect() as connection:
        return len((await connection.execute(select(schema.reports.c.id))).all())


async def test_a_signed_submission_is_stored_and_a_replay_answers_the_same_receipt(ingest: Ingest) -> None:
    agent = Installation()
    request = agent.submission(valid_report(W45), valid_report(W46))
    response = await ingest.submit(request)
    assert [r.status for r in response.receipts] == [ingest_service_pb2.RECEIPT_STATUS_ACCEPTED] * 2
    assert response.receipts[0].stored_at.ToDatetime(tzinfo=dt.UTC) == NOW
    replay = await ingest.submit(request)
    assert [r.status for r in replay.receipts] == [ingest_service_pb2.RECEIPT_STATUS_DUPLICATE] * 2
    assert [r.receipt_id for r in replay.receipts] == [r.receipt_id for r in response.receipts]
    assert await stored_reports(ingest) == 2


async def test_a_bad_signature_is_unauthenticated_and_stores_nothing(ingest: Ingest) -> None:
    agent = Installation()
    request = agent.submission(valid_report(W46))
    request.reports[0].signature = bytes(64)
    with pytest.raises(Unauthenticated):
        await ingest.submit(request)
    assert await stored_reports(ingest) == 0


async def test_a_leaked_installation_id_is_useless_without_the_key(ingest: Ingest, clock: FakeClock) -> None:
    owner, thief = Installation(), Installation()  # same installation ID, another key
    await ingest.submit(owner.submission(valid_report(W45)))
    clock.now = NOW + dt.timedelta(hours=2)
    with pytest.raises(Unauthenticated):
        await ingest.submit(thief.submission(valid_report(W46)))
    with pytest.raises(Unauthenticated):
        await ingest.delete(thief.deletion())
    assert await stored_reports(ingest) == 1


async def test_size_is_checked_before_the_signature_and_before_parsing(ingest: Ingest) -> None:
    request = Installation().submission(valid_report(W46))
    request.reports[0].report = b"\xff" * 11_000  # garbage, larger than the cap, badly signed
    with pytest.raises(FieldError) as refused:
        await ingest.submit(request)
    assert [v.field for v in refused.value.violations] == ["reports[0].report"]


async def test_signed_garbage_is_invalid(ingest: Ingest) -> None:
    agent = Installation()
    request = agent.submission(valid_report(W46))
    request.reports[0].report = b"\xff\xff\xff"
    request.reports[0].signature = agent.key.sign(b"\xff\xff\xff")
    with pytest.raises(FieldError) as refused:
        await ingest.submit(request)
    assert refused.value.violations[0].field == "reports[0].report"


async def test_validation_errors_name_the_report_and_field(ingest: Ingest) -> None:
    report = valid_report(W46)
    report.usage.uptime_hours = 500
    with pytest.raises(FieldError) as refused:
        await ingest.submit(Installation().submission(valid_report(W45), report))
    assert [v.field for v in refused.value.violations] == ["reports[1].report.usage.uptime_hours"]
    assert await stored_reports(ingest) == 0  # all or nothing


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: setattr(r, "installation_id", b"short"), "installation_id"),
        (lambda r: setattr(r, "public_key", b"short"), "public_key"),
        (lambda r: r.ClearField("reports"), "reports"),
        (lambda r: r.reports.append(r.reports[0]), "reports"),  # the same week twice
    ],
)
async def test_envelope_errors(ingest: Ingest, change: object, field: str) -> None:
    request = Installation().submission(valid_report(W46))
    change(request)  # type: ignore[operator]
    with pytest.raises(FieldError) as refused:
        await ingest.submit(request)
    assert refused.value.violations[0].field == field


async def test_too_many_reports_in_one_submission(ingest: Ingest) -> None:
    week = W46
    reports = []
    for _ in range(MAX_REPORTS_PER_SUBMISSION + 1):
        reports.append(valid_report(week))
        week = week.previous()
    with pytest.raises(FieldError) as refused:
        await ingest.submit(Installation().submission(*reports))
    assert refused.value.violations[0].field == "reports"


async def test_a_second_submission_within_the_hour_is_told_when_to_retry(
    ingest: Ingest, clock: FakeClock
) -> None:
    agent = Installation()
    await ingest.submit(agent.submission(valid_report(W45)))
    clock.now = NOW + dt.timedelta(minutes=15)
    with pytest.raises(TooManySubmissions) as limited:
        await ingest.submit(agent.submission(valid_report(W46)))
    assert limited.value.retry_after == dt.timedelta(minutes=45)


async def test_unknown_enum_values_are_stored_as_other(ingest: Ingest) -> None:
    report = valid_report(W46)
    report.installation.platform = 77  # type: ignore[assignment]  # from a newer agent
    await ingest.submit(Installation().submission(report))
    async with ingest.store.engine.connect() as connection:
        platform = (await connection.execute(select(schema.reports.c.platform))).scalar_one()
    assert platform == common_pb2.PLATFORM_OTHER


async def test_deletion_with_the_key_deletes_and_refuses_later_reports(
    ingest: Ingest, clock: FakeClock
) -> None:
    agent = Installation()
    await ingest.submit(agent.submission(valid_report(W45), valid_report(W46)))
    receipt = await ingest.delete(agent.deletion())
    assert (receipt.installation_id, receipt.reports_deleted) == (INSTALLATION, 2)
    assert await stored_reports(ingest) == 0
    clock.now = NOW + dt.timedelta(hours=2)
    with pytest.raises(Forbidden):
        await ingest.submit(agent.submission(valid_report(W46)))


async def test_bad_deletion_requests(ingest: Ingest) -> None:
    agent = Installation(uuid.uuid4().bytes)
    with pytest.raises(FieldError) as refused:
        await ingest.delete(agent.deletion(requested_at=NOW + dt.timedelta(days=1)))
    assert refused.value.violations[0].field == "order.requested_at"
    with pytest.raises(FieldError) as refused:
        await ingest.delete(agent.signed_deletion(b"\xff\xff"))  # signed garbage
    assert refused.value.violations[0].field == "order"
    unsigned = agent.deletion()
    unsigned.signature = bytes(64)
    with pytest.raises(Unauthenticated):
        await ingest.delete(unsigned)
