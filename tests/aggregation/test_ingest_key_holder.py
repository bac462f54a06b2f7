"""Everything about an installation is answered only to the holder of its key
(DESIGN.md, privacy rule 9), over real TLS on SQLite and PostgreSQL.

An auditor tries every case mechanically: every ingest call (a new report, a
report already stored, a deletion request), in every state an installation ID
can be in, from three callers: the key's holder, a caller with another key
(properly signed with it: it knows the ID, not the key), and a forger (the
holder's public key, a signature that does not verify). Each case gets a world
of its own, so no answer depends on an earlier one.

- The forger gets one identical answer (code, message, trailing details) in
  every state, never-seen included: the signature is checked before anything
  is looked up.
- The caller with another key gets one identical answer in every state of an
  ID that is taken (live, rate-limited, deleted in any way): no receipt, no
  deletion, no retry delay. Never-seen IDs are the documented exception:
  first use registers the key, so such a caller learns that an ID was never
  used (docs/aggregation.md). Its calls change nothing that is stored.
- The holder gets the real answer: receipts, the original receipts of
  duplicates and deletions, PERMISSION_DENIED, RESOURCE_EXHAUSTED with a delay.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from printernizer.stats.v1 import ingest_admin_service_pb2, ingest_service_pb2
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.errors import retry_delay
from printernizer_stats.common.weeks import Week

from .. import databases
from .conftest import (
    ADMIN_TOKEN,
    TIMEOUT,
    Installation,
    OffsetClock,
    RunningServer,
    report_of,
    running_server,
    snapshot,
)

database_url = databases.database_url
ADMIN = bearer_metadata(ADMIN_TOKEN)
# Long enough ago that the one-submission-per-hour window has passed.
EARLIER = -dt.timedelta(hours=2)

STATES = (
    "live",
    "rate_limited",  # accepted a submission within the hour
    "deleted_by_itself",
    "deleted_by_operator",
    "deleted_before_reporting",  # a signed deletion request for an ID that never reported
    "deleted_by_operator_before_reporting",  # no key was ever registered: nobody holds one
    "never_seen",
)
TAKEN = tuple(state for state in STATES if state != "never_seen")
CALLS = ("submit_new_report", "submit_stored_report", "delete")


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    message: str
    # Every trailing metadata entry (google.rpc.Status details among them).
    trailing: tuple[tuple[str, Any], ...]
    result: Any = field(default=None, compare=False)  # the response, or the error

    @property
    def refusal(self) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
        return self.code, self.message, self.trailing


async def answer_of(call: Awaitable[Any]) -> Answer:
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        trailing = tuple((key, value) for key, value in error.trailing_metadata() or ())
        return Answer(error.code(), error.details() or "", trailing, result=error)
    return Answer(grpc.StatusCode.OK, "", (), result=response)


@dataclass
class World:
    """One installation ID brought into one state, and what its holder was told."""

    owner: Installation
    stored_week: Week
    new_week: Week
    stored: ingest_service_pb2.ReportReceipt | None = None
    deleted: ingest_service_pb2.DeleteInstallationResponse | None = None


class Auditor:
    def __init__(self, server: RunningServer, clock: OffsetClock) -> None:
        self.server = server
        self.clock = clock
        last = Week.containing(dt.datetime.now(dt.UTC)).previous()
        self.stored_week, self.new_week = last.previous(), last

    async def world(self, state: str) -> World:
        owner = Installation(uuid.uuid4().bytes)
        world = World(owner, self.stored_week, self.new_week)
        stub = self.server.stub
        if state in ("live", "deleted_by_itself", "deleted_by_operator"):
            self.clock.offset = EARLIER
        if state in ("live", "rate_limited", "deleted_by_itself", "deleted_by_operator"):
            submission = owner.submission(report_of(owner, self.stored_week))
            world.stored = (await stub.SubmitReports(submission, timeout=TIMEOUT)).receipts[0]
        self.clock.offset = dt.timedelta()
        if state in ("deleted_by_itself", "deleted_before_reporting"):
            world.deleted = await stub.DeleteInstallation(owner.deletion(), timeout=TIMEOUT)
        if state in ("deleted_by_operator", "deleted_by_operator_before_reporting"):
            request = ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest(
                installation_id=owner.installation_id
            )
            operator = await self.server.admin.DeleteInstallationAsOperator(
                request, metadata=ADMIN, timeout=TIMEOUT
            )
            world.deleted = operator.receipt
        return world

    async def call(self, name: str, caller: str, world: World) -> Answer:
        owner = world.owner
        signer = owner if caller == "holder" else Installation(owner.installation_id)
        if name == "delete":
            request: Any = signer.deletion(dt.datetime.now(dt.UTC))
        else:
            week = world.stored_week if name == "submit_stored_report" else world.new_week
            request = signer.submission(report_of(owner, week))
        if caller == "forger":  # the holder's public key, a signature by someone else
            request.public_key = owner.public_key
        stub = self.server.stub
        if name == "delete":
            return await answer_of(stub.DeleteInstallation(request, timeout=TIMEOUT))
        return await answer_of(stub.SubmitReports(request, timeout=TIMEOUT))

    async def everything_stored(self) -> tuple[object, ...]:
        status = await self.server.admin.GetIngestStatus(
            ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN, timeout=TIMEOUT
        )
        counters = sorted((c.counter, c.value) for c in status.counters)
        return snapshot(self.server.database_url), counters

    async def audit(self, name: str, caller: str) -> dict[str, tuple[World, Answer]]:
        """The call in every state, each in a world of its own; a caller
        without the key must leave everything stored as it was."""
        answers = {}
        for state in STATES:
            world = await self.world(state)
            before = await self.everything_stored() if caller != "holder" and state != "never_seen" else None
            answers[state] = (world, await self.call(name, caller, world))
            if before is not None:
                assert await self.everything_stored() == before, (name, caller, state)
        return answers


@pytest.fixture
async def auditor(database_url: str, tmp_path: Path) -> AsyncIterator[Auditor]:
    clock = OffsetClock()
    # The per-address call limit would answer the auditor's bursts instead of the rules.
    async with running_server(database_url, tmp_path, clock=clock, peer_calls_per_second=0) as server:
        yield Auditor(server, clock)


@pytest.mark.parametrize("name", CALLS)
async def test_a_forger_gets_the_same_refusal_in_every_state(auditor: Auditor, name: str) -> None:
    answers = await auditor.audit(name, "forger")
    refusals = {state: answer.refusal for state, (_, answer) in answers.items()}
    assert len(set(refusals.values())) == 1, refusals
    assert next(iter(refusals.values()))[0] == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("name", CALLS)
async def test_another_key_gets_the_same_refusal_in_every_state_of_a_taken_id(
    auditor: Auditor, name: str
) -> None:
    answers = await auditor.audit(name, "other_key")
    refusals = {state: answers[state][1].refusal for state in TAKEN}
    assert len(set(refusals.values())) == 1, refusals
    code, message, trailing = next(iter(refusals.values()))
    assert (code, message, trailing) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "not signed with this installation's key",
        (),
    )
    # The documented exception: an ID never used is registered by its first use.
    assert answers["never_seen"][1].code == grpc.StatusCode.OK


async def test_the_holder_gets_the_real_answer_in_every_state(auditor: Auditor) -> None:
    ok, denied, unauthenticated = (
        grpc.StatusCode.OK,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    new = await auditor.audit("submit_new_report", "holder")
    codes = {state: answer.code for state, (_, answer) in new.items()}
    assert codes == {
        "live": ok,
        "rate_limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "deleted_by_itself": denied,
        "deleted_by_operator": denied,
        "deleted_before_reporting": denied,
        "deleted_by_operator_before_reporting": unauthenticated,  # nobody holds its key
        "never_seen": ok,
    }
    for state in ("live", "never_seen"):
        (receipt,) = new[state][1].result.receipts
        assert receipt.status == ingest_service_pb2.RECEIPT_STATUS_ACCEPTED
    delay = retry_delay(new["rate_limited"][1].result)
    assert delay is not None
    assert dt.timedelta(minutes=59) < delay <= dt.timedelta(hours=1)

    stored = await auditor.audit("submit_stored_report", "holder")
    for state in ("live", "rate_limited"):
        world, answer = stored[state]
        (receipt,) = answer.result.receipts
        assert world.stored is not None
        assert receipt.status == ingest_service_pb2.RECEIPT_STATUS_DUPLICATE
        assert (receipt.receipt_id, receipt.stored_at) == (world.stored.receipt_id, world.stored.stored_at)
    assert {state: answer.code for state, (_, answer) in stored.items() if state.startswith("deleted")} == {
        "deleted_by_itself": denied,
        "deleted_by_operator": denied,
        "deleted_before_reporting": denied,
        "deleted_by_operator_before_reporting": unauthenticated,
    }

    deletions = await auditor.audit("delete", "holder")
    for state, reports_deleted in (("live", 1), ("rate_limited", 1), ("never_seen", 0)):
        receipt = deletions[state][1].result
        assert (receipt.installation_id, receipt.reports_deleted) == (
            deletions[state][0].owner.installation_id,
            reports_deleted,
        )
    for state in ("deleted_by_itself", "deleted_by_operator", "deleted_before_reporting"):
        world, answer = deletions[state]
        assert answer.code == ok
        assert answer.result == world.deleted  # the original receipt, to the holder only
    assert deletions["deleted_by_operator_before_reporting"][1].code == unauthenticated
