"""StatsClient: record usage events without ever blocking or failing the host app.

The client is the public helpers over parts with one job each, as
OpenTelemetry splits a batch processor from its exporter:

- buffer.py: the bounded in-memory buffer the helpers append to, and its drop count;
- encoder.py: the host's values as the contract's messages (validated, encoded, cached);
- transport.py: the thread and channel that send the buffer to the agent, with
  batch identities for exactly-once delivery and retries while it is away;
- hooks.py: uncaught exceptions recorded as errors;
- testing.py: the same client recording into memory, for a host's own tests.

`record()` and the helpers cost the host well under a microsecond: each helper
looks up its event's encoded kind by the enum values (encoded and validated
once per distinct combination) and appends it, with the time, to the buffer.
When the agent is down the events wait, up to the buffer's bound; beyond it new
events are dropped and counted, and the count is reported to the agent later.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from printernizer_stats.common.events import MAX_BATCH_EVENTS

from ._generated.enums import (
    Component,
    DeploymentMode,
    ErrorType,
    Feature,
    FileType,
    JobFailureReason,
    PrinterType,
)
from .buffer import EventBuffer, use_simulated_clock
from .encoder import Encoder, KindParts
from .hooks import install_exception_hooks
from .mapping import error_type_for, file_size_bucket, file_type_for, job_duration_bucket, job_failure_reason
from .printernizer import PRINTERNIZER_ERROR_TYPES, component_for_exception, printer_type_for
from .transport import AgentTransport, Transport, default_socket_path

if TYPE_CHECKING:  # betterproto2's dataclasses: the `dataclasses` extra, imported only when used
    from ._generated.printernizer.stats.v1 import UsageEvent

__all__ = ["ClientStats", "StatsClient", "default_socket_path"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientStats:
    """What the client did, for the host's own diagnostics."""

    buffered: int
    sent: int
    dropped: int  # buffer full, or recording disabled at the agent
    invalid: int  # events that did not fit the contract (never sent)
    unplaced: int  # names the mappings did not know: recorded as OTHER, the name never kept
    agent_reachable: bool


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
        use_simulated_clock()
        self._record_into(EventBuffer(max_buffered, batch_size), error_types, error_names)
        transport = AgentTransport(
            self.socket_path,
            self._buffer,
            self._encoder,
            max_batch=max(batch_size, min(max_batch, MAX_BATCH_EVENTS)),  # a backlog goes in larger calls
            flush_interval=flush_interval,
            call_timeout=call_timeout,
        )
        self._buffer.batch_ready = transport.wake  # a full batch waits: send it
        self._transport: Transport = transport
        transport.start()
        atexit.register(self.close)

    def _record_into(
        self,
        buffer: EventBuffer,
        error_types: Mapping[type[BaseException], ErrorType] | None,
        error_names: Mapping[str, ErrorType],
    ) -> None:
        """What the helpers need, whatever carries the buffer on: the buffer,
        the encoder, and each event kind's encoded parts."""
        self._buffer = buffer
        self._put: Callable[[Any], None] = buffer.put  # the hot path: no call of the client's own between
        self._encoder = encoder = Encoder()
        self._error_types = dict(error_types or {})
        self._error_names = error_names  # a host's exception classes, by name
        self._invalid = 0  # calls whose values do not fit the contract
        self._unplaced = 0  # names the mappings did not know (recorded as OTHER)
        self._remove_hooks: list[Callable[[], None]] = []
        self._job_created = KindParts("job_created", encoder)
        self._job_completed = KindParts("job_completed", encoder)
        self._job_failed = KindParts("job_failed", encoder)
        self._file_downloaded = KindParts("file_downloaded", encoder)
        self._file_uploaded = KindParts("file_uploaded", encoder)
        self._printer_connected = KindParts("printer_connected", encoder)
        self._printer_disconnected = KindParts("printer_disconnected", encoder)
        self._feature_enabled = KindParts("feature_enabled", encoder)
        self._feature_disabled = KindParts("feature_disabled", encoder)
        self._error_occurred = KindParts("error_occurred", encoder)
        self._app_stopped = encoder.kind_part(("app_stopped",))

    # --- recording (the hot path) ------------------------------------------------
    # Each helper: its values -> the encoded kind part (a dict look-up per value)
    # -> the buffer. Values that do not fit the contract raise on the way and are
    # counted as invalid.

    def record(self, event: UsageEvent) -> None:
        """Record a typed event (any kind). Never blocks, never raises."""
        try:
            if event is None:
                self._invalid += 1
            else:
                self._put(event)  # encoded when its batch is made
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
            self._remove_hooks.append(install_exception_hooks(self.error, component))
        except Exception:
            log.debug("installing the exception hook failed", exc_info=True)

    def printer_fleet(self, counts: Mapping[PrinterType, int]) -> None:
        """The configured printers by family; call at start-up and on changes."""
        try:
            self._put(self._encoder.printer_fleet(counts))
        except Exception:
            self._invalid += 1

    def app_started(self, app_version: str, deployment_mode: DeploymentMode) -> None:
        """Printernizer started: its version (as numbers), Python's, the platform."""
        try:
            self._put(self._encoder.app_started(app_version, deployment_mode))
        except Exception:
            self._invalid += 1

    def app_stopped(self) -> None:
        try:
            self._put(self._app_stopped)
        except Exception:
            self._invalid += 1

    # --- diagnostics and delivery ---------------------------------------------------

    def stats(self) -> ClientStats:
        transport = self._transport
        return ClientStats(
            buffered=len(self._buffer) + transport.in_flight(),
            sent=transport.sent,
            dropped=transport.dropped() + self._buffer.dropped_unreported,
            invalid=self._invalid + transport.invalid,
            unplaced=self._unplaced,
            agent_reachable=transport.agent_reachable,
        )

    def flush(self, timeout: float = 2.0) -> bool:
        """Ask the sender to send now and wait up to `timeout` seconds for the
        buffer to drain; True when everything recorded so far was delivered."""
        return self._transport.flush(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered (waiting at most `timeout`) and stop."""
        try:
            self._transport.close(timeout)
            atexit.unregister(self.close)
        except Exception:
            log.debug("closing the stats client failed", exc_info=True)
