"""The channel to the local agent: a daemon thread that sends the buffer over
the agent's Unix socket, in batches with an identity, and tries again when the
agent is away.

Batches of up to 1,000 events go at most about once a second (a backlog, from
a slow agent or a burst, in fewer calls of up to 5,000). The thread has its own
gRPC channel, so it serves sync and async hosts alike and never touches the
host's event loop.

Each batch carries this client's ID and the batch's number. Once sent a batch
is never changed: when the answer is lost the same batch goes again, and the
agent, which commits each client's last batch with its events, answers it as
the first time without storing anything twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import grpc
from printernizer.stats.v1 import agent_service_pb2
from printernizer_stats.common.cli import user_runtime_dir

from .buffer import EventBuffer
from .encoder import Encoder

log = logging.getLogger(__name__)

RECORD_EVENTS = "/printernizer.stats.v1.AgentService/RecordEvents"
SOCKET_ENVIRONMENT = "STATS_AGENT_SOCKET"
# After the agent says recording is disabled, ask again this much later.
_DISABLED_RECHECK_SECONDS = 60.0
# The agent is a local process: when it is away (restarting), try again soon
# and often (a failed connect to a Unix socket costs microseconds), so events
# flow again within a second of it serving; its disk full, once a second.
_UNREACHABLE_RETRY_SECONDS = 0.25
_DISK_FULL_RETRY_SECONDS = 1.0
# Any other failure (a bug, a timeout): a slower, growing retry.
_MAX_BACKOFF_SECONDS = 30.0
# gRPC's own reconnection backoff (1 s, growing to 2 minutes by default) would
# hold the channel down long after a local agent is back: keep it short.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def default_socket_path() -> Path:
    """The agent's socket when none is given: $STATS_AGENT_SOCKET, else the
    user's runtime directory (where the agent puts it by default)."""
    return Path(os.environ.get(SOCKET_ENVIRONMENT) or user_runtime_dir() / "agent.sock")


class Transport(Protocol):
    """What carries the buffer on: the agent's socket (AgentTransport), or
    memory (printernizer_stats.sdk.testing). Its counts are its part of the
    client's diagnostics."""

    sent: int  # stored
    invalid: int  # not encodable, or refused as the agent refuses
    agent_reachable: bool

    def in_flight(self) -> int: ...

    def dropped(self) -> int: ...

    def flush(self, timeout: float) -> bool: ...

    def close(self, timeout: float) -> None: ...


class AgentTransport:
    """Takes batches from `buffer`, frames them with `encoder` and sends them
    to the agent at `socket_path` from a thread of its own (`start()`)."""

    def __init__(
        self,
        socket_path: Path,
        buffer: EventBuffer,
        encoder: Encoder,
        *,
        max_batch: int,
        flush_interval: float,
        call_timeout: float,
    ) -> None:
        self.socket_path = socket_path
        self._buffer = buffer
        self._encoder = encoder
        self._max_batch = max_batch  # at most this many per call
        self._flush_interval = flush_interval
        self._call_timeout = call_timeout
        # The batch in flight: encoded events, the drop count it reports, and
        # its number. Once sent it is never changed, so a resend (the answer
        # was lost) is the same batch, which the agent stores once.
        self._pending: list[bytes] = []
        self._in_hand = 0  # events taken from the buffer, not yet the pending batch
        self._pending_dropped = 0
        self._pending_sequence = 0
        self._client_id = os.urandom(16)  # this client's batches, to the agent
        self._sequence = 0
        self._dropped = 0  # reported to the agent (buffer full, or recording disabled)
        self.invalid = 0
        self.sent = 0
        self._resume_at = 0.0
        self.agent_reachable = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._draining = threading.Event()  # flush() asked for everything now
        self._lock = threading.Lock()  # guards the sending, not the buffer
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Send now (a full batch waits)."""
        self._wake.set()

    def in_flight(self) -> int:
        return len(self._pending)

    def dropped(self) -> int:
        """Drops reported to the agent, or in the batch that reports them."""
        return self._dropped + self._pending_dropped

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="printernizer-stats", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Ask the sender to send now and wait up to `timeout` seconds for the
        buffer to drain; True when everything recorded so far was delivered."""
        deadline = time.monotonic() + timeout
        self._draining.set()
        self._wake.set()
        while time.monotonic() < deadline:
            if self._drained():
                return True
            time.sleep(0.005)
            self._wake.set()
        return self._drained()

    def _drained(self) -> bool:
        """Nothing buffered, in hand or in flight. Read in this order: events
        leave the buffer only after `_in_hand` is set, and it is cleared only
        after they are the pending batch (without locking the hot path)."""
        return not len(self._buffer) and not self._in_hand and not self._pending

    def close(self, timeout: float) -> None:
        """Send what is buffered (waiting at most `timeout`) and stop."""
        if self._stopping.is_set():
            return
        self.flush(timeout)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.0
        target = f"unix:{self.socket_path.absolute()}"
        with grpc.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
            call = channel.unary_unary(
                RECORD_EVENTS,
                request_serializer=lambda data: data,
                response_deserializer=agent_service_pb2.RecordEventsResponse.FromString,
            )
            while not self._stopping.is_set():
                self._wake.wait(timeout=backoff or self._flush_interval)
                self._wake.clear()
                if self._resume_at and time.monotonic() >= self._resume_at:
                    self._resume_at = 0.0
                    self._buffer.resume()
                try:
                    backoff = self._send_once(call, backoff)
                except Exception:
                    log.debug("stats sender failed", exc_info=True)
                    backoff = min(_MAX_BACKOFF_SECONDS, max(1.0, backoff * 2))

    def _take_batch(self) -> None:
        """Unless a batch is in flight, make the next one of buffered events:
        all that wait, up to the most one call may carry (a backlog, from a
        slow agent or a burst, thus goes in fewer, larger calls), with the drop
        count to report and the next number."""
        if self._pending_sequence:
            return  # sent before, answer lost: it goes again as it was
        count = self._buffer.ready(self._max_batch)
        self._in_hand = count  # before they leave the buffer: flush() must not see nothing
        try:
            framed, invalid = self._encoder.batch(*self._buffer.take(count))
            self.invalid += invalid
            dropped = self._buffer.take_dropped()
            if framed or dropped:
                self._sequence += 1
                self._pending, self._pending_dropped, self._pending_sequence = framed, dropped, self._sequence
        finally:
            self._in_hand = 0

    def _batch_done(self) -> None:
        self._pending, self._pending_dropped, self._pending_sequence = [], 0, 0

    def _send_once(self, call: grpc.UnaryUnaryMultiCallable[bytes, Any], backoff: float) -> float:
        """Send what is pending and buffered: one call, then more while a full
        batch waits (or until empty when draining); returns the delay before
        the next attempt (0 when all is well)."""
        with self._lock:
            while True:
                self._take_batch()
                if not self._pending_sequence:
                    return 0.0
                request = (
                    b"".join(self._pending)
                    + agent_service_pb2.RecordEventsRequest(
                        dropped_by_client=self._pending_dropped,
                        client_id=self._client_id,
                        batch_sequence=self._pending_sequence,
                    ).SerializeToString()
                )
                try:
                    response = call(request, timeout=self._call_timeout)
                except grpc.RpcError as exc:
                    return self._failed(exc, backoff)
                self.agent_reachable = True
                self._dropped += self._pending_dropped
                if response.recording_disabled:
                    # Nothing is recorded: stop buffering for a while.
                    self._resume_at = time.monotonic() + _DISABLED_RECHECK_SECONDS
                    self._dropped += len(self._pending) + self._buffer.pause()
                    self._batch_done()
                    return 0.0
                # The agent's answer for each event: stored, or refused (counted as invalid).
                self.sent += response.stored_count
                self.invalid += len(response.refused)
                self._batch_done()
                # Go on only with a full batch (or when asked to drain): what came
                # in during the call waits for the next trigger, so a steady stream
                # goes in full batches rather than a full one and a remainder.
                buffer = self._buffer
                if not len(buffer) or (len(buffer) < buffer.batch_size and not self._draining.is_set()):
                    if not len(buffer):
                        self._draining.clear()
                    return 0.0

    def _failed(self, exc: grpc.RpcError, backoff: float) -> float:
        """What a failed call leaves to do; returns the delay before the next try."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            # The agent refused every event of the batch: it would refuse them
            # again. Its drop count goes with the next batch.
            self.agent_reachable = True  # it answered
            self.invalid += len(self._pending)
            self._buffer.return_dropped(self._pending_dropped)
            self._batch_done()
            return 0.0
        if code == grpc.StatusCode.UNAVAILABLE:
            self.agent_reachable = False  # not serving (yet): it is back within a second
            return _UNREACHABLE_RETRY_SECONDS
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _DISK_FULL_RETRY_SECONDS  # its disk is full: it takes events again once there is room
        self.agent_reachable = False
        return min(_MAX_BACKOFF_SECONDS, max(self._flush_interval, backoff * 2))
