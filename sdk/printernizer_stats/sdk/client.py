"""StatsClient: record usage events without ever blocking or failing the host app.

`record()` and the helpers only append a small tuple to a bounded in-memory
buffer (well under a microsecond). A daemon thread sends the buffer to the
agent in batches of up to 1,000 events, at most about once a second. When the
agent is down the events wait, up to the buffer's bound; beyond it new events
are dropped and counted, and the count is reported to the agent later. The
thread has its own gRPC channel, so it serves sync and async hosts alike and
never touches the host's event loop.

Encoding is the hot spot of the flush, so each distinct part of an event (its
kind with its enum values; the second it happened in) is serialized once by
protobuf and cached; a batch is the concatenation of the cached pieces, which
is exactly protobuf's own encoding of the same RecordEventsRequest.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import timestamp_pb2
from printernizer.stats.v1 import agent_service_pb2, common_pb2, usage_event_pb2
from printernizer_stats.common.cli import user_runtime_dir
from printernizer_stats.common.clock import SimulatedClock, testing_allowed
from printernizer_stats.common.events import KINDS_BY_NAME, MAX_BATCH_EVENTS, InvalidEvent, validate

from ._generated.enums import (
    Component,
    DeploymentMode,
    ErrorType,
    Feature,
    FileType,
    JobFailureReason,
    PrinterType,
)
from .mapping import (
    error_type_for,
    file_size_bucket,
    file_type_for,
    job_duration_bucket,
    job_failure_reason,
    parse_version,
    python_version,
    this_architecture,
    this_platform,
)
from .printernizer import PRINTERNIZER_ERROR_TYPES, component_for_exception, printer_type_for

if TYPE_CHECKING:  # betterproto2's dataclasses: the `dataclasses` extra, imported only when used
    from ._generated.printernizer.stats.v1 import UsageEvent

log = logging.getLogger(__name__)

RECORD_EVENTS = "/printernizer.stats.v1.AgentService/RecordEvents"
_now = time.time
SOCKET_ENVIRONMENT = "STATS_AGENT_SOCKET"
SIMULATED_CLOCK_ENVIRONMENT = "STATS_AGENT_SIMULATED_CLOCK"
# Cached encodings kept at most (distinct kinds are few; seconds roll over).
_CACHE_LIMIT = 4096
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


@dataclass(frozen=True)
class ClientStats:
    """What the client did, for the host's own diagnostics."""

    buffered: int
    sent: int
    dropped: int  # buffer full, or recording disabled at the agent
    invalid: int  # events that did not fit the contract (never sent)
    unplaced: int  # names the mappings did not know: recorded as OTHER, the name never kept
    agent_reachable: bool


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# RecordEventsRequest.events is field 1, length-delimited: tag byte 0x0A.
_EVENTS_TAG = b"\x0a"
# Tag and one-byte length for the usual event of under 128 bytes.
_SHORT_FRAMES = [_EVENTS_TAG + bytes([size]) for size in range(128)]


class _Encoder:
    """Builds RecordEventsRequest bytes from buffered items, caching per part."""

    def __init__(self) -> None:
        self._kinds: dict[Any, bytes] = {}
        self._seconds: dict[int, bytes] = {}

    def kind_part(self, key: Any) -> bytes:
        """The serialized kind of an event (validated once per distinct key)."""
        part = self._kinds.get(key)
        if part is None:
            event = self._build(key)
            validate(event, int(time.time() * 1000))  # raises InvalidEvent
            part = event.SerializeToString(deterministic=True)
            if len(self._kinds) >= _CACHE_LIMIT:
                self._kinds.clear()
            self._kinds[key] = part
        return part

    @staticmethod
    def event_part(event: usage_event_pb2.UsageEvent) -> bytes | None:
        """The serialized kind of an event built here (not cached: its values
        vary); None when it does not fit the contract (counted as invalid)."""
        try:
            validate(event, int(time.time() * 1000))
        except InvalidEvent:
            return None
        return event.SerializeToString(deterministic=True)

    @staticmethod
    def _build(key: Any) -> usage_event_pb2.UsageEvent:
        if isinstance(key, tuple):
            name, *values = key
            spec = KINDS_BY_NAME[name]
            event = usage_event_pb2.UsageEvent()
            body = getattr(event, name)
            body.SetInParent()
            for field, value in zip(spec.columns, values, strict=True):
                setattr(body, field.name, int(value))
            return event
        # A typed betterproto2 event's kind, serialized by betterproto2: the
        # same wire format, parsed by protobuf.
        return usage_event_pb2.UsageEvent.FromString(key)

    def time_part(self, second: int) -> bytes:
        part = self._seconds.get(second)
        if part is None:
            part = usage_event_pb2.UsageEvent(
                occurred_at=timestamp_pb2.Timestamp(seconds=second)
            ).SerializeToString()
            if len(self._seconds) >= _CACHE_LIMIT:
                self._seconds.clear()
            self._seconds[second] = part
        return part

    def batch(self, times: list[float], parts: list[Any]) -> tuple[list[bytes], int]:
        """Frame buffered events; returns (framed events, count of invalid ones).

        `parts` holds encoded kind parts (bytes), or typed events to encode
        here. The loop inlines the cache look-ups: it runs for every event."""
        seconds = self._seconds
        framed: list[bytes] = []
        invalid = 0
        for when, part in zip(times, parts, strict=True):
            try:
                if type(part) is not bytes:  # a typed event
                    occurred, key = _key_of(part)
                    when = occurred or when
                    part = self.kind_part(key)
                second = int(when)
                body = (seconds.get(second) or self.time_part(second)) + part
            except Exception:
                invalid += 1
                continue
            size = len(body)
            framed.append((_SHORT_FRAMES[size] if size < 128 else _EVENTS_TAG + _varint(size)) + body)
        return framed, invalid


class _Parts(dict[Any, Any]):
    """The encoded kind parts of one event kind, by its enum values.

    One dict level per enum field, keyed by the enum members: a hit is a plain
    subscript (C code, no tuple built), which keeps the host's cost per call
    small. A miss builds the next level, or encodes and validates the event's
    kind through the encoder; None means the values do not fit the contract
    (not stored, so a mistake is counted each time)."""

    def __init__(self, kind: str, encoder: _Encoder, depth: int, prefix: tuple[Any, ...] = ()) -> None:
        super().__init__()
        self.kind, self._encoder, self._depth, self._prefix = kind, encoder, depth, prefix

    def __missing__(self, value: Any) -> Any:
        values = (*self._prefix, value)
        if len(values) < self._depth:
            found: Any = _Parts(self.kind, self._encoder, self._depth, values)
        else:
            try:
                found = self._encoder.kind_part((self.kind, *values))
            except Exception:
                return None
        if len(self) < _CACHE_LIMIT:
            self[value] = found
        return found


def _key_of(event: UsageEvent) -> tuple[float | None, Any]:
    """(time it happened if the host set one, cache key) of a typed event (a
    betterproto2 dataclass: only a host with the `dataclasses` extra has them)."""
    import betterproto2

    from ._generated.printernizer.stats.v1 import UsageEvent

    name, body = betterproto2.which_one_of(event, "kind")
    when = event.occurred_at.timestamp() if event.occurred_at is not None else None
    spec = KINDS_BY_NAME.get(name)
    if spec is None or body is None:
        raise InvalidEvent("kind", "no event kind is set")
    if spec.keeps_payload:
        return when, bytes(UsageEvent(**{name: body}))
    return when, (name, *(int(getattr(body, f.name)) for f in spec.columns))


def default_socket_path() -> Path:
    """The agent's socket when none is given: $STATS_AGENT_SOCKET, else the
    user's runtime directory (where the agent puts it by default)."""
    return Path(os.environ.get(SOCKET_ENVIRONMENT) or user_runtime_dir() / "agent.sock")


def _use_simulated_clock() -> None:
    """In tests of the real processes (STATS_TESTING=1), the host stamps its
    events with the agent's simulated clock (printernizer_stats.common.clock), as a host and
    its agent share one clock on a machine; otherwise (again) with the machine's."""
    global _now
    path = os.environ.get(SIMULATED_CLOCK_ENVIRONMENT, "")
    if path and testing_allowed():
        clock = SimulatedClock(path)
        _now = lambda: clock().timestamp()  # noqa: E731 - the hot path calls a plain function
    else:
        _now = time.time  # a client made after a simulated one must not keep its clock


class StatsClient:
    """Records usage events for the local stats agent.

    Every public method returns at once and never raises. Create one per
    process, call `close()` at shutdown (also registered with atexit).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        max_buffered: int = 10_000,
        batch_size: int = 1_000,
        max_batch: int = MAX_BATCH_EVENTS,
        flush_interval: float = 1.0,
        call_timeout: float = 2.0,
        error_types: Mapping[type[BaseException], ErrorType] | None = None,
        error_names: Mapping[str, ErrorType] = PRINTERNIZER_ERROR_TYPES,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        _use_simulated_clock()
        self._max_buffered = max_buffered
        self._batch_size = batch_size  # send when this many are waiting
        self._max_batch = max(batch_size, min(max_batch, MAX_BATCH_EVENTS))  # at most this many per call
        self._flush_interval = flush_interval
        self._call_timeout = call_timeout
        self._error_types = dict(error_types or {})
        self._error_names = error_names  # a host's exception classes, by name
        self._unplaced = 0  # names the mappings did not know (recorded as OTHER)
        # Two deques, not one of (time, part) tuples: recording then creates no
        # container object per event, so the garbage collector has nothing to do.
        self._times: deque[float] = deque()
        self._parts: deque[Any] = deque()
        # The batch in flight: encoded events, the drop count it reports, and
        # its number. Once sent it is never changed, so a resend (the answer
        # was lost) is the same batch, which the agent stores once.
        self._pending: list[bytes] = []
        self._in_hand = 0  # events taken from the buffer, not yet the pending batch
        self._pending_dropped = 0
        self._pending_sequence = 0
        self._client_id = os.urandom(16)  # this client's batches, to the agent
        self._sequence = 0
        # Events dropped (buffer full, or recording disabled at the agent) and
        # not yet reported to the agent; the sender moves them to _dropped.
        self._dropped_unreported = 0
        self._dropped = 0
        self._limit = max_buffered  # 0 while the agent says recording is disabled
        self._invalid = 0
        self._sent = 0
        self._resume_at = 0.0
        self._agent_reachable = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._draining = threading.Event()  # flush() asked for everything now
        self._lock = threading.Lock()  # guards the flush, not record()
        self._encoder = _Encoder()
        encoder = self._encoder
        self._job_created = _Parts("job_created", encoder, 1)
        self._job_completed = _Parts("job_completed", encoder, 2)
        self._job_failed = _Parts("job_failed", encoder, 3)
        self._file_downloaded = _Parts("file_downloaded", encoder, 2)
        self._file_uploaded = _Parts("file_uploaded", encoder, 2)
        self._printer_connected = _Parts("printer_connected", encoder, 1)
        self._printer_disconnected = _Parts("printer_disconnected", encoder, 1)
        self._feature_enabled = _Parts("feature_enabled", encoder, 1)
        self._feature_disabled = _Parts("feature_disabled", encoder, 1)
        self._error_occurred = _Parts("error_occurred", encoder, 2)
        self._app_stopped = encoder.kind_part(("app_stopped",))
        self._thread: threading.Thread | None = None
        self._start()

    # --- recording (the hot path) ------------------------------------------------

    def _put(self, part: bytes | UsageEvent | None) -> None:
        # The hot path: a length check and two appends.
        parts = self._parts
        if part is None:
            self._invalid += 1
        elif len(parts) < self._limit:
            self._times.append(_now())
            parts.append(part)
            if len(parts) == self._batch_size:
                self._wake.set()
        else:
            self._dropped_unreported += 1

    def record(self, event: UsageEvent) -> None:
        """Record a typed event (any kind). Never blocks, never raises."""
        try:
            self._put(event)
        except Exception:
            self._invalid += 1

    def job_created(self, printer_type: PrinterType | str) -> None:
        try:
            if type(printer_type) is str:
                printer_type = self._printer_type(printer_type)
            self._put(self._job_created[printer_type])
        except Exception:
            self._invalid += 1

    def job_completed(self, printer_type: PrinterType | str, duration_seconds: float | None = None) -> None:
        """A job that printed to the end; its duration None when not measured."""
        try:
            if type(printer_type) is str:
                printer_type = self._printer_type(printer_type)
            self._put(self._job_completed[printer_type][job_duration_bucket(duration_seconds)])
        except Exception:
            self._invalid += 1

    def job_failed(
        self,
        printer_type: PrinterType | str,
        duration_seconds: float | None = None,
        reason: JobFailureReason | None = None,
    ) -> None:
        """A job that ended early; the duration and the reason None when unknown."""
        try:
            if type(printer_type) is str:
                printer_type = self._printer_type(printer_type)
            bucket = job_duration_bucket(duration_seconds)
            self._put(self._job_failed[printer_type][bucket][job_failure_reason(reason)])
        except Exception:
            self._invalid += 1

    def file_downloaded(self, size_bytes: int, file_type: FileType | str) -> None:
        """`file_type` as the contract's, or a file name or extension ("x.3mf", ".ply")."""
        try:
            if type(file_type) is str:
                file_type = self._file_type(file_type)
            self._put(self._file_downloaded[file_size_bucket(size_bytes)][file_type])
        except Exception:
            self._invalid += 1

    def file_uploaded(self, size_bytes: int, file_type: FileType | str) -> None:
        """`file_type` as the contract's, or a file name or extension ("x.3mf", ".ply")."""
        try:
            if type(file_type) is str:
                file_type = self._file_type(file_type)
            self._put(self._file_uploaded[file_size_bucket(size_bytes)][file_type])
        except Exception:
            self._invalid += 1

    def printer_connected(self, printer_type: PrinterType | str) -> None:
        try:
            if type(printer_type) is str:
                printer_type = self._printer_type(printer_type)
            self._put(self._printer_connected[printer_type])
        except Exception:
            self._invalid += 1

    def printer_disconnected(self, printer_type: PrinterType | str) -> None:
        try:
            if type(printer_type) is str:
                printer_type = self._printer_type(printer_type)
            self._put(self._printer_disconnected[printer_type])
        except Exception:
            self._invalid += 1

    def _printer_type(self, name: str) -> PrinterType:
        """Printernizer's printer type name as the contract's family (OTHER, counted, if unknown)."""
        found, placed = printer_type_for(name)
        self._unplaced += not placed
        return found

    def _file_type(self, name: str) -> FileType:
        found, placed = file_type_for(name)
        self._unplaced += not placed
        return found

    def feature(self, feature: Feature, enabled: bool) -> None:
        try:
            self._put((self._feature_enabled if enabled else self._feature_disabled)[feature])
        except Exception:
            self._invalid += 1

    def error(self, exc: BaseException, component: Component | None = None) -> None:
        """Record an error by the exception's class only: never its message or
        traceback, which may hold paths, host names or user input. Without a
        component, the Printernizer module it was raised in says which (its
        name only)."""
        try:
            if component is None:
                component, placed = component_for_exception(exc)
                self._unplaced += not placed
            error_type = error_type_for(exc, self._error_types, self._error_names)
            self._put(self._error_occurred[error_type][component])
        except Exception:
            self._invalid += 1

    def install_exception_hook(self, component: Component) -> None:
        """Record uncaught exceptions (main thread, other threads, the running
        asyncio loop) as errors of `component`: by class only, never the
        message or traceback. The previous hooks still run."""
        try:
            previous = sys.excepthook
            previous_thread = threading.excepthook

            def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
                self.error(value, component)
                previous(kind, value, tb)

            def thread_excepthook(arguments: threading.ExceptHookArgs) -> None:
                if arguments.exc_value is not None:
                    self.error(arguments.exc_value, component)
                previous_thread(arguments)

            sys.excepthook = excepthook
            threading.excepthook = thread_excepthook
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            previous_loop = loop.get_exception_handler()

            def loop_handler(running: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
                exception = context.get("exception")
                if isinstance(exception, BaseException):
                    self.error(exception, component)
                if previous_loop is not None:
                    previous_loop(running, context)
                else:
                    running.default_exception_handler(context)

            loop.set_exception_handler(loop_handler)
        except Exception:
            log.debug("installing the exception hook failed", exc_info=True)

    def printer_fleet(self, counts: Mapping[PrinterType, int]) -> None:
        """The configured printers by family; call at start-up and on changes."""
        try:
            event = usage_event_pb2.UsageEvent()
            for printer_type, count in sorted(counts.items()):
                if count > 0:
                    event.printer_fleet_observed.printers.add(printer_type=int(printer_type), count=count)
            event.printer_fleet_observed.SetInParent()
            self._put(self._encoder.event_part(event))
        except Exception:
            self._invalid += 1

    def app_started(self, app_version: str, deployment_mode: DeploymentMode) -> None:
        """Printernizer started: its version (as numbers), Python's, the platform."""
        try:
            event = usage_event_pb2.UsageEvent()
            started = event.app_started
            started.app_version.CopyFrom(parse_version(app_version))
            started.python_version.CopyFrom(python_version())
            started.platform = common_pb2.Platform.ValueType(this_platform())
            started.architecture = common_pb2.CpuArchitecture.ValueType(this_architecture())
            started.deployment_mode = common_pb2.DeploymentMode.ValueType(deployment_mode)
            self._put(self._encoder.event_part(event))
        except Exception:
            self._invalid += 1

    def app_stopped(self) -> None:
        try:
            self._put(self._app_stopped)
        except Exception:
            self._invalid += 1

    # --- diagnostics ---------------------------------------------------------------

    def stats(self) -> ClientStats:
        return ClientStats(
            buffered=len(self._parts) + len(self._pending),
            sent=self._sent,
            dropped=self._dropped + self._dropped_unreported + self._pending_dropped,
            invalid=self._invalid,
            unplaced=self._unplaced,
            agent_reachable=self._agent_reachable,
        )

    # --- the background sender -------------------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="printernizer-stats", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def flush(self, timeout: float = 2.0) -> bool:
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
        return not self._parts and not self._in_hand and not self._pending

    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered (waiting at most `timeout`) and stop."""
        try:
            if self._stopping.is_set():
                return
            self.flush(timeout)
            self._stopping.set()
            self._wake.set()
            if self._thread is not None:
                self._thread.join(timeout)
            atexit.unregister(self.close)
        except Exception:
            log.debug("closing the stats client failed", exc_info=True)

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
                    self._resume_at, self._limit = 0.0, self._max_buffered
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
        times, parts = self._times, self._parts
        # A recorder may have appended a time but not yet its part: take pairs only.
        count = min(self._max_batch, len(times), len(parts))
        self._in_hand = count  # before they leave the buffer: flush() must not see nothing
        framed, invalid = self._encoder.batch(
            [times.popleft() for _ in range(count)], [parts.popleft() for _ in range(count)]
        )
        self._invalid += invalid
        dropped = self._dropped_unreported
        if framed or dropped:
            self._sequence += 1
            self._pending, self._pending_dropped, self._pending_sequence = framed, dropped, self._sequence
            self._dropped_unreported -= dropped
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
                self._agent_reachable = True
                self._dropped += self._pending_dropped
                if response.recording_disabled:
                    # Nothing is recorded: stop buffering for a while.
                    self._limit = 0
                    self._resume_at = time.monotonic() + _DISABLED_RECHECK_SECONDS
                    self._dropped += len(self._pending) + len(self._parts)
                    self._batch_done()
                    self._parts.clear()
                    self._times.clear()
                    return 0.0
                # The agent's answer for each event: stored, or refused (counted as invalid).
                self._sent += response.stored_count
                self._invalid += len(response.refused)
                self._batch_done()
                # Go on only with a full batch (or when asked to drain): what came
                # in during the call waits for the next trigger, so a steady stream
                # goes in full batches rather than a full one and a remainder.
                if not self._parts or (len(self._parts) < self._batch_size and not self._draining.is_set()):
                    if not self._parts:
                        self._draining.clear()
                    return 0.0

    def _failed(self, exc: grpc.RpcError, backoff: float) -> float:
        """What a failed call leaves to do; returns the delay before the next try."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            # The agent refused every event of the batch: it would refuse them
            # again. Its drop count goes with the next batch.
            self._agent_reachable = True  # it answered
            self._invalid += len(self._pending)
            self._dropped_unreported += self._pending_dropped
            self._batch_done()
            return 0.0
        if code == grpc.StatusCode.UNAVAILABLE:
            self._agent_reachable = False  # not serving (yet): it is back within a second
            return _UNREACHABLE_RETRY_SECONDS
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _DISK_FULL_RETRY_SECONDS  # its disk is full: it takes events again once there is room
        self._agent_reachable = False
        return min(_MAX_BACKOFF_SECONDS, max(self._flush_interval, backoff * 2))
