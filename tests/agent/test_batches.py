"""Batches from a recording client are stored once, and one refused event
costs the others of its batch nothing (the real agent, on its socket).

A batch carries an identity (the client's ID and the batch's number): sent
again after a lost answer, before or after the agent restarts, it gets its
first answer and nothing is stored twice, nor any count added twice. A batch
without one (grpcurl, `buf curl`) is stored each time it is sent.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import agent_service_pb2, usage_event_pb2

from .. import agent_harness
from ..agent_harness import (
    RPC_TIMEOUT,
    RunningAgent,
    agent_process,
    db_event_count,
    job_completed,
    job_created,
)
from .conftest import bad_request

agent = agent_harness.agent
agent_dir = agent_harness.agent_dir
CLIENT = os.urandom(16)


def batch(
    sequence: int, *events: usage_event_pb2.UsageEvent, client: bytes = CLIENT, dropped: int = 0
) -> agent_service_pb2.RecordEventsRequest:
    return agent_service_pb2.RecordEventsRequest(
        events=events, client_id=client, batch_sequence=sequence, dropped_by_client=dropped
    )


async def test_a_batch_sent_again_gets_its_first_answer_and_stores_nothing_twice(agent: RunningAgent) -> None:
    first = batch(1, job_created(), usage_event_pb2.UsageEvent(), job_completed(), dropped=3)
    answer = await agent.stub.RecordEvents(first, timeout=RPC_TIMEOUT)
    assert (answer.stored_count, [r.index for r in answer.refused], answer.duplicate) == (2, [1], False)
    again = await agent.stub.RecordEvents(first, timeout=RPC_TIMEOUT)
    assert (again.stored_count, list(again.refused), again.duplicate) == (2, list(answer.refused), True)
    status = await agent.status()
    assert (status.stored_events, status.rejected_events, status.dropped_events) == (2, 1, 3)
    # The next batch is stored; an older one is known too (a client sends in order).
    assert (await agent.stub.RecordEvents(batch(2, job_created()), timeout=RPC_TIMEOUT)).stored_count == 1
    older = await agent.stub.RecordEvents(batch(1, job_created()), timeout=RPC_TIMEOUT)
    assert (older.stored_count, older.duplicate) == (0, True)
    # Another client's batch 1 is its own.
    other = await agent.stub.RecordEvents(batch(1, job_created(), client=os.urandom(16)), timeout=RPC_TIMEOUT)
    assert (other.stored_count, other.duplicate) == (1, False)
    assert (await agent.status()).stored_events == 4


async def test_a_batch_without_identity_is_stored_each_time(agent: RunningAgent) -> None:
    plain = agent_service_pb2.RecordEventsRequest(events=[job_created()])
    for _ in range(2):
        answer = await agent.stub.RecordEvents(plain, timeout=RPC_TIMEOUT)
        assert (answer.stored_count, answer.duplicate) == (1, False)
    assert (await agent.status()).stored_events == 2


async def test_a_refused_batch_sent_again_is_refused_again_and_counted_once(agent: RunningAgent) -> None:
    refused = batch(1, usage_event_pb2.UsageEvent(), job_created(printer=999), dropped=5)
    fields = ["events[0].kind", "events[1].job_created.printer_type"]
    assert await bad_request(agent.stub.RecordEvents(refused, timeout=RPC_TIMEOUT)) == fields
    assert await bad_request(agent.stub.RecordEvents(refused, timeout=RPC_TIMEOUT)) == fields
    status = await agent.status()
    # The drops come again with the client's next batch, which is stored.
    assert (status.stored_events, status.rejected_events, status.dropped_events) == (0, 2, 0)
    stored = await agent.stub.RecordEvents(batch(2, job_created(), dropped=5), timeout=RPC_TIMEOUT)
    assert stored.stored_count == 1
    assert (await agent.status()).dropped_events == 5


@pytest.mark.parametrize(
    ("client", "sequence", "field"),
    [
        (b"short", 1, "client_id"),
        (os.urandom(17), 1, "client_id"),
        (b"", 1, "client_id"),
        (os.urandom(16), 0, "batch_sequence"),
    ],
    ids=["short", "long", "missing", "no_number"],
)
async def test_a_broken_identity_names_its_field_and_stores_nothing(
    agent: RunningAgent, client: bytes, sequence: int, field: str
) -> None:
    request = batch(sequence, job_created(), client=client)
    assert await bad_request(agent.stub.RecordEvents(request, timeout=RPC_TIMEOUT)) == [field]
    assert (await agent.status()).stored_events == 0


@pytest.mark.processes
async def test_batches_are_remembered_across_a_restart(tmp_path: Path) -> None:
    async with agent_process(tmp_path) as process:
        async with grpc.aio.insecure_channel(process.target) as channel:
            call = channel.unary_unary(
                "/printernizer.stats.v1.AgentService/RecordEvents",
                request_serializer=agent_service_pb2.RecordEventsRequest.SerializeToString,
                response_deserializer=agent_service_pb2.RecordEventsResponse.FromString,
            )
            first = await call(batch(7, job_created(), job_created()), timeout=RPC_TIMEOUT)
            assert (first.stored_count, first.duplicate) == (2, False)
        process.kill()  # SIGKILL: no clean shutdown
        await process.start()
        async with grpc.aio.insecure_channel(process.target) as channel:
            call = channel.unary_unary(
                "/printernizer.stats.v1.AgentService/RecordEvents",
                request_serializer=agent_service_pb2.RecordEventsRequest.SerializeToString,
                response_deserializer=agent_service_pb2.RecordEventsResponse.FromString,
            )
            again = await call(batch(7, job_created(), job_created()), timeout=RPC_TIMEOUT)
            assert (again.stored_count, again.duplicate) == (2, True)
    assert db_event_count(process.db_path) == 2
