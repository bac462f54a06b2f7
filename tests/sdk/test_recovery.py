"""From host to agent, exactly once, through kills, restarts and a full disk:
the real agent process, the SDK in this process recording all along.

- The agent is killed with SIGKILL many times: right after it commits a batch
  from the SDK, before it answers (its failpoint, STATS_AGENT_KILL_AFTER_COMMITS),
  and at random moments. Every event the host recorded ends up stored exactly
  once, or counted by the SDK as dropped or invalid; no event is stored twice.
- A restarted agent is reached again within about a second of serving, and
  nothing is dropped meanwhile while the buffer has room.
- A full disk that clears is written again within about two seconds.

Each prints its figures. The bounds asserted are loose (the machines are
shared): the old SDK, which backed off for up to 30 s, fails them all.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from printernizer.stats.v1 import agent_service_pb2
from printernizer_stats.sdk import PrinterType, StatsClient

from ..agent_harness import AgentProcess, agent_process, db_event_count, short_private_dir
from ..system.conftest import agent_status, small_disk

pytestmark = pytest.mark.processes

KILL_AFTER_COMMITS = "STATS_AGENT_KILL_AFTER_COMMITS"


class Recorder:
    """The host app: records one event about every `interval` seconds, in a thread of its own."""

    def __init__(self, client: StatsClient, interval: float = 0.0005) -> None:
        self.client, self.interval = client, interval
        self.recorded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(10):
                self.client.job_created(PrinterType.PRUSA)
                self.recorded += 1
            time.sleep(self.interval * 10)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextmanager
def recording(agent: AgentProcess, **options: float) -> Iterator[tuple[StatsClient, Recorder]]:
    client = StatsClient(agent.socket_path, **options)  # type: ignore[arg-type]
    try:
        with Recorder(client) as recorder:
            yield client, recorder
    finally:
        client.close(timeout=1)


async def wait_for_stored_to_grow(agent: AgentProcess, beyond: int, timeout: float = 30) -> float:
    """Seconds until the agent's database holds more than `beyond` events."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if db_event_count(agent.db_path) > beyond:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing more was stored within {timeout} s")


async def test_killing_the_agent_loses_nothing_and_stores_nothing_twice() -> None:
    rng = random.Random()
    base = short_private_dir()
    at_commit = at_random = 0
    async with agent_process(base, STATS_TESTING="1") as agent:
        with recording(agent, max_buffered=100_000) as (client, recorder):
            while at_commit + at_random < 24:
                if (at_commit + at_random) % 2 == 0:
                    # Killed by its failpoint, right after committing a batch it never answers.
                    agent.kill()
                    agent.env[KILL_AFTER_COMMITS] = str(rng.randint(1, 4))
                    await agent.start(wait=False)  # it may die before a probe sees it serving
                    await asyncio.to_thread(agent.process.wait, 30)  # type: ignore[union-attr]
                    at_commit += 1
                else:
                    agent.env.pop(KILL_AFTER_COMMITS, None)
                    await agent.start()
                    await asyncio.sleep(rng.uniform(0.0, 0.4))
                    agent.kill()  # SIGKILL, at any moment
                    at_random += 1
            agent.env.pop(KILL_AFTER_COMMITS, None)
            await agent.start()
            recorder.stop()
            assert await asyncio.to_thread(client.flush, 60), client.stats()
        stats = client.stats()
        status = await agent_status(agent.target)
        stored = db_event_count(agent.db_path)
    print(
        f"\n{recorder.recorded} events recorded by the host; {at_commit} kills right after a commit, "
        f"{at_random} at random; stored {stored}, dropped {stats.dropped}, invalid {stats.invalid}, "
        f"left in the buffer {stats.buffered}"
    )
    assert stats.buffered == 0
    assert stored == stats.sent  # nothing stored twice: a resent batch is answered, not stored again
    assert stats.sent + stats.dropped + stats.invalid == recorder.recorded
    assert stats.invalid == 0
    assert status.dropped_events == stats.dropped  # the drop counts too, exactly once
    assert stored > 0


async def test_a_restarted_agent_is_reached_again_within_a_second() -> None:
    base = short_private_dir()
    delays = []
    async with agent_process(base) as agent:
        with recording(agent) as (client, _):
            await asyncio.sleep(0.5)
            for _ in range(5):
                agent.kill()
                await asyncio.sleep(0.5)  # the host goes on recording meanwhile
                before = db_event_count(agent.db_path)
                await agent.start()  # returns once it serves
                delays.append(await wait_for_stored_to_grow(agent, before))
            dropped = client.stats().dropped
    print(f"\ndelivering again after the agent serves: {', '.join(f'{d:.2f} s' for d in delays)}")
    assert dropped == 0  # the buffer had room
    assert statistics.median(delays) < 1.5
    assert max(delays) < 3


async def test_a_full_disk_that_clears_is_written_again_within_two_seconds() -> None:
    with small_disk("3m") as disk:
        filler = disk / "filler"
        async with agent_process(disk) as agent:
            filler.write_bytes(b"\0" * (2_600 * 1024))  # most of the disk is taken
            with recording(agent, max_buffered=50_000) as (client, _):
                deadline = time.monotonic() + 60
                while (await agent_status(agent.target)).storage != agent_service_pb2.STORAGE_CONDITION_FULL:
                    assert time.monotonic() < deadline, "the disk never filled"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1)  # full for a while, the host still recording
                before = db_event_count(agent.db_path)
                filler.unlink()
                delay = await wait_for_stored_to_grow(agent, before)
                assert client.stats().agent_reachable
            status = await agent_status(agent.target)
    print(f"\nstored again {delay:.2f} s after the disk had room")
    assert status.storage == agent_service_pb2.STORAGE_CONDITION_OK
    assert delay < 4
