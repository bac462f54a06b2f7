"""The host's client for its local agent's own API (AgentService): consent,
status, local figures, the next report's preview, the ledger of reports sent,
the export, delete-all and submit-now. It is what a host's privacy page and
settings talk to; `StatsClient` (client.py) stays the recording path.

    from printernizer_stats.sdk.local import LocalAgent, Unavailable

    agent = LocalAgent()                 # the agent's socket: $STATS_AGENT_SOCKET, else its default path
    status = agent.status()
    if isinstance(status, Unavailable):  # the agent is not running, or refused the call
        print(status.code, status.message)

`LocalAgent` is synchronous (any thread), `AsyncLocalAgent` the same calls for
asyncio code. By default no call raises into the host: a failure (the agent is
not running, its socket is absent, it refused the call) returns an
`Unavailable` (falsy, with the gRPC status code name and a message). Built with
`raise_errors=True`, a failure raises `AgentError` instead, and only that.

Only grpcio and protobuf are needed: nothing here imports betterproto2 or a
web framework. `migrate_printernizer_opt_in` carries a user's opt-in from
Printernizer's own database over to the agent, once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message
from printernizer.stats.v1 import agent_service_pb2 as agent_api
from printernizer.stats.v1 import agent_service_pb2_grpc, aggregated_stats_pb2, common_pb2

from .client import default_socket_path

__all__ = [
    "AgentError",
    "AsyncLocalAgent",
    "LocalAgent",
    "MigrationAction",
    "MigrationResult",
    "Unavailable",
    "default_socket_path",
    "migrate_printernizer_opt_in",
    "migrate_printernizer_opt_in_async",
    "unwrap",
]

log = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS = 10.0
# An export streams every stored event: a year of a busy installation takes a minute or two.
EXPORT_TIMEOUT_SECONDS = 600.0
# The agent is local: when it is away, say so at once (no waiting for it), and
# notice it is back within about a second.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)
# The gRPC status code names that mean "the agent cannot be reached right now".
UNREACHABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})

SHARING = agent_api.CONSENT_STATE_SHARING
LOCAL_ONLY = agent_api.CONSENT_STATE_LOCAL_ONLY
DISABLED = agent_api.CONSENT_STATE_DISABLED


class AgentError(Exception):
    """The one exception a client built with `raise_errors=True` raises.

    `code` is the gRPC status code name (`UNAVAILABLE` when the agent is not
    running or its socket is absent, `INVALID_ARGUMENT` with `field` naming the
    request field at fault, ...); `message` says why, for people."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.field = code, message, field

    @property
    def unreachable(self) -> bool:
        """Whether the agent could not be reached (not running, too slow)."""
        return self.code in UNREACHABLE_CODES


@dataclass(frozen=True)
class Unavailable:
    """What a call returns instead of an answer when it failed (by default).
    Falsy, so `if not answer:` works as well as `isinstance(answer, Unavailable)`."""

    code: str
    message: str
    field: str | None = None

    def __bool__(self) -> bool:
        return False

    @property
    def unreachable(self) -> bool:
        return self.code in UNREACHABLE_CODES

    def error(self) -> AgentError:
        return AgentError(self.code, self.message, self.field)


_M = TypeVar("_M", bound=Message)
Result: TypeAlias = _M | Unavailable  # a generic alias: Result[agent_api.Consent]


def unwrap(answer: _M | Unavailable) -> _M:
    """The answer, or its failure raised as AgentError (for a client built with
    `raise_errors=True`, where it never is one, this only tells type checkers so)."""
    if isinstance(answer, Unavailable):
        raise answer.error()
    return answer


def error_of(exc: BaseException) -> AgentError:
    """Any failure of a call, as an AgentError (a gRPC status, or anything else)."""
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else None
        message = details or name.replace("_", " ").lower()
        if name == "UNAVAILABLE":
            message = f"the statistics agent cannot be reached ({message})"
        return AgentError(name, message, _field_of(exc))
    return AgentError("UNKNOWN", f"the call failed: {type(exc).__name__}")


def _field_of(exc: grpc.RpcError) -> str | None:
    """The first request field a refusal names (from its BadRequest details)."""
    try:
        from printernizer_stats.common.errors import field_violations

        violations = field_violations(exc)  # type: ignore[arg-type]
    except Exception:  # no details, or details of another shape: no field then
        return None
    return violations[0][0] if violations else None


def _consent_request(state: int, schema_version: int, level: int) -> agent_api.SetConsentRequest:
    return agent_api.SetConsentRequest(
        state=state,  # type: ignore[arg-type]
        schema_version=schema_version,  # type: ignore[arg-type]
        level=level,  # type: ignore[arg-type]
    )


def _preview_request(week: common_pb2.IsoWeek | None, level: int) -> agent_api.PreviewReportRequest:
    request = agent_api.PreviewReportRequest(level=level)  # type: ignore[arg-type]
    if week is not None:
        request.week.CopyFrom(week)
    return request


class _Base:
    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None,
        raise_errors: bool,
        timeout: float,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.raise_errors = raise_errors
        self.timeout = timeout

    @property
    def target(self) -> str:
        return f"unix:{self.socket_path.absolute()}"

    def _failed(self, exc: BaseException) -> Unavailable:
        error = error_of(exc)
        if not isinstance(exc, grpc.RpcError | AgentError):
            log.warning("a call to the statistics agent failed: %s", type(exc).__name__)
        if self.raise_errors:
            raise error from exc
        return Unavailable(error.code, error.message, error.field)


class LocalAgent(_Base):
    """The agent's local API, for synchronous code (thread-safe). Every call
    returns the agent's answer (protobuf messages of agent_service.proto) or,
    when it failed, an `Unavailable`; with `raise_errors=True` it raises
    `AgentError` instead."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        raise_errors: bool = False,
        timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(socket_path, raise_errors, timeout)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: agent_service_pb2_grpc.AgentServiceStub | None = None

    def _agent(self) -> agent_service_pb2_grpc.AgentServiceStub:
        with self._lock:
            if self._stub is None:
                self._channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
                self._stub = agent_service_pb2_grpc.AgentServiceStub(self._channel)
            return self._stub

    def _unary(self, method: str, request: Message) -> Any:
        try:
            return getattr(self._agent(), method)(request, timeout=self.timeout)
        except Exception as exc:
            return self._failed(exc)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def __enter__(self) -> LocalAgent:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def consent(self) -> Result[agent_api.Consent]:
        answer = self._unary("GetConsent", agent_api.GetConsentRequest())
        return answer if isinstance(answer, Unavailable) else answer.consent

    def set_consent(self, state: int, schema_version: int = 0, level: int = 0) -> Result[agent_api.Consent]:
        """Record the user's choice; `schema_version` (the disclosure's version the
        user was shown) is required for SHARING, and `level` (a ConsentLevel:
        how much to share) goes with SHARING only; 0 shares everything."""
        answer = self._unary("SetConsent", _consent_request(state, schema_version, level))
        return answer if isinstance(answer, Unavailable) else answer.consent

    def opt_in(self, schema_version: int, level: int = 0) -> Result[agent_api.Consent]:
        """Share at `level` (0: everything); below everything needs schema version 3 or later."""
        return self.set_consent(SHARING, schema_version, level)

    def opt_out(self) -> Result[agent_api.Consent]:
        """Stop sharing: the agent asks the server to delete what was sent; local figures stay."""
        return self.set_consent(LOCAL_ONLY)

    def status(self) -> Result[agent_api.GetStatusResponse]:
        result: Result[agent_api.GetStatusResponse] = self._unary("GetStatus", agent_api.GetStatusRequest())
        return result

    def local_stats(self, weeks: int = 0) -> Result[agent_api.GetLocalStatsResponse]:
        result: Result[agent_api.GetLocalStatsResponse] = self._unary(
            "GetLocalStats", agent_api.GetLocalStatsRequest(weeks=weeks)
        )
        return result

    def preview(
        self, week: common_pb2.IsoWeek | None = None, level: int = 0
    ) -> Result[agent_api.PreviewReportResponse]:
        """The next report (or `week`'s), as `level` would send it (0: the level in effect)."""
        result: Result[agent_api.PreviewReportResponse] = self._unary(
            "PreviewReport", _preview_request(week, level)
        )
        return result

    def sent_reports(self, limit: int = 0) -> Result[agent_api.ListSentReportsResponse]:
        result: Result[agent_api.ListSentReportsResponse] = self._unary(
            "ListSentReports", agent_api.ListSentReportsRequest(limit=limit)
        )
        return result

    def delete_all(self) -> Result[agent_api.DeleteAllDataResponse]:
        result: Result[agent_api.DeleteAllDataResponse] = self._unary(
            "DeleteAllData", agent_api.DeleteAllDataRequest()
        )
        return result

    def submit_now(self) -> Result[agent_api.SubmitNowResponse]:
        result: Result[agent_api.SubmitNowResponse] = self._unary("SubmitNow", agent_api.SubmitNowRequest())
        return result

    def export(
        self, page_size: int = 0, timeout: float = EXPORT_TIMEOUT_SECONDS
    ) -> list[agent_api.ExportDataResponse] | Unavailable:
        """Everything the agent keeps, as its pages (the first carries the
        settings and the ledger). Whole or not at all: a failure part-way is a
        failure. For a stream that is not held in memory, use `export_pages`."""
        pages = self.export_pages(page_size, timeout)
        try:
            return list(pages)
        except AgentError as exc:
            return self._failed(exc)

    def export_pages(
        self, page_size: int = 0, timeout: float = EXPORT_TIMEOUT_SECONDS
    ) -> Iterator[agent_api.ExportDataResponse]:
        """The export as it streams. A failure, at the start or part-way, raises
        AgentError whatever `raise_errors` says: a stream cut short must never
        look complete."""
        try:
            call = self._agent().ExportData(agent_api.ExportDataRequest(page_size=page_size), timeout=timeout)
            yield from call
        except Exception as exc:
            raise error_of(exc) from exc


class AsyncLocalAgent(_Base):
    """The same calls as `LocalAgent`, as coroutines for asyncio code. Its
    channel opens on first use, in the running event loop (and again if it is
    used from another loop)."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        raise_errors: bool = False,
        timeout: float = CALL_TIMEOUT_SECONDS,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    ) -> None:
        super().__init__(socket_path, raise_errors, timeout)
        self.interceptors = interceptors
        self._channel: grpc.aio.Channel | None = None
        self._stub: agent_service_pb2_grpc.AgentServiceAsyncStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _agent(self) -> agent_service_pb2_grpc.AgentServiceAsyncStub:
        loop = asyncio.get_running_loop()
        if self._stub is None or self._loop is not loop:
            # A channel belongs to the loop it was made in; one made in a loop
            # that has ended is dropped with it.
            self._channel = grpc.aio.insecure_channel(
                self.target, options=CHANNEL_OPTIONS, interceptors=self.interceptors
            )
            self._stub = agent_service_pb2_grpc.AgentServiceStub(self._channel)
            self._loop = loop
        assert self._stub is not None
        return self._stub

    async def _unary(self, method: str, request: Message) -> Any:
        try:
            return await getattr(self._agent(), method)(request, timeout=self.timeout)
        except Exception as exc:
            return self._failed(exc)

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None and self._loop is asyncio.get_running_loop():
            await channel.close()

    async def __aenter__(self) -> AsyncLocalAgent:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def consent(self) -> Result[agent_api.Consent]:
        answer = await self._unary("GetConsent", agent_api.GetConsentRequest())
        return answer if isinstance(answer, Unavailable) else answer.consent

    async def set_consent(
        self, state: int, schema_version: int = 0, level: int = 0
    ) -> Result[agent_api.Consent]:
        answer = await self._unary("SetConsent", _consent_request(state, schema_version, level))
        return answer if isinstance(answer, Unavailable) else answer.consent

    async def opt_in(self, schema_version: int, level: int = 0) -> Result[agent_api.Consent]:
        return await self.set_consent(SHARING, schema_version, level)

    async def opt_out(self) -> Result[agent_api.Consent]:
        return await self.set_consent(LOCAL_ONLY)

    async def status(self) -> Result[agent_api.GetStatusResponse]:
        result: Result[agent_api.GetStatusResponse] = await self._unary(
            "GetStatus", agent_api.GetStatusRequest()
        )
        return result

    async def local_stats(self, weeks: int = 0) -> Result[agent_api.GetLocalStatsResponse]:
        result: Result[agent_api.GetLocalStatsResponse] = await self._unary(
            "GetLocalStats", agent_api.GetLocalStatsRequest(weeks=weeks)
        )
        return result

    async def preview(
        self, week: common_pb2.IsoWeek | None = None, level: int = 0
    ) -> Result[agent_api.PreviewReportResponse]:
        result: Result[agent_api.PreviewReportResponse] = await self._unary(
            "PreviewReport", _preview_request(week, level)
        )
        return result

    async def sent_reports(self, limit: int = 0) -> Result[agent_api.ListSentReportsResponse]:
        result: Result[agent_api.ListSentReportsResponse] = await self._unary(
            "ListSentReports", agent_api.ListSentReportsRequest(limit=limit)
        )
        return result

    async def delete_all(self) -> Result[agent_api.DeleteAllDataResponse]:
        result: Result[agent_api.DeleteAllDataResponse] = await self._unary(
            "DeleteAllData", agent_api.DeleteAllDataRequest()
        )
        return result

    async def submit_now(self) -> Result[agent_api.SubmitNowResponse]:
        result: Result[agent_api.SubmitNowResponse] = await self._unary(
            "SubmitNow", agent_api.SubmitNowRequest()
        )
        return result

    async def export(
        self, page_size: int = 0, timeout: float = EXPORT_TIMEOUT_SECONDS
    ) -> list[agent_api.ExportDataResponse] | Unavailable:
        """Everything the agent keeps, whole or not at all (see LocalAgent.export)."""
        try:
            return [page async for page in self.export_pages(page_size, timeout)]
        except AgentError as exc:
            return self._failed(exc)

    async def export_pages(
        self, page_size: int = 0, timeout: float = EXPORT_TIMEOUT_SECONDS
    ) -> AsyncGenerator[agent_api.ExportDataResponse, None]:
        """The export as it streams; any failure raises AgentError (see LocalAgent.export_pages)."""
        try:
            call = self._agent().ExportData(agent_api.ExportDataRequest(page_size=page_size), timeout=timeout)
            async for page in call:
                yield page
        except Exception as exc:
            raise error_of(exc) from exc


# --- carrying over Printernizer's own opt-in ---------------------------------------------

# The report schema whose disclosure Printernizer's own (static) privacy page
# described when its user opted in there: the first.
PRINTERNIZER_SCHEMA_VERSION = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
# The row this migration leaves in Printernizer's `usage_settings`, so it is done once.
MIGRATION_MARKER = "stats_agent_migration"


class MigrationAction(enum.StrEnum):
    """What `migrate_printernizer_opt_in` did."""

    OPTED_IN = "opted_in"  # the user had opted in: the agent now shares
    NOT_OPTED_IN = "not_opted_in"  # no opt-in stored (never asked, or opted out): nothing to carry over
    ALREADY_CHOSEN = "already_chosen"  # the agent already has the user's choice: it is kept
    ALREADY_MIGRATED = "already_migrated"  # done before (the marker row is there): nothing done
    NO_DATABASE = "no_database"  # no such database, or no usage tables in it
    FAILED = "failed"  # the agent could not be reached or refused: try again at the next start


@dataclass(frozen=True)
class MigrationResult:
    action: MigrationAction
    # Printernizer's stored `opt_in_status` ("enabled", "disabled"), None when absent.
    stored_opt_in: str | None = None
    # The agent's consent afterwards, when it was asked.
    consent: agent_api.Consent | None = None
    detail: str = ""


def _read_printernizer_settings(db_path: Path) -> dict[str, str] | None:
    """Printernizer's `usage_settings` (key -> value), read only; None without them."""
    if not db_path.is_file():
        return None
    try:
        connection = sqlite3.connect(f"{db_path.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            rows = connection.execute("SELECT key, value FROM usage_settings").fetchall()
        finally:
            connection.close()
    except sqlite3.Error:
        return None
    return {str(key): str(value) for key, value in rows}


def _mark_migrated(db_path: Path, action: MigrationAction, now: dt.datetime) -> None:
    """Leave the marker row (Printernizer's own INSERT OR REPLACE convention)."""
    try:
        connection = sqlite3.connect(db_path, timeout=5)
        try:
            with connection:
                connection.execute(
                    "INSERT OR REPLACE INTO usage_settings (key, value) VALUES (?, ?)",
                    (MIGRATION_MARKER, f"{action.value} {now.replace(tzinfo=None).isoformat()}"),
                )
        finally:
            connection.close()
    except sqlite3.Error as exc:  # the migration still happened; the agent's choice keeps it idempotent
        log.warning("could not mark the opt-in migration done in Printernizer's database: %s", exc)


def _decide(settings: dict[str, str] | None) -> MigrationResult | None:
    """The answer when Printernizer's own settings already decide it, else None."""
    if settings is None:
        return MigrationResult(MigrationAction.NO_DATABASE, detail="no usage_settings in that database")
    stored = settings.get("opt_in_status")
    if MIGRATION_MARKER in settings:
        return MigrationResult(MigrationAction.ALREADY_MIGRATED, stored, detail=settings[MIGRATION_MARKER])
    return None


def _after_consent(
    stored: str | None, consent: Result[agent_api.Consent], mark: bool
) -> tuple[MigrationResult | None, bool]:
    """Given the agent's consent: the result, or None when sharing must be set now."""
    if isinstance(consent, Unavailable):
        return MigrationResult(MigrationAction.FAILED, stored, detail=consent.message), False
    if consent.chosen != agent_api.CONSENT_STATE_UNSPECIFIED:
        result = MigrationResult(
            MigrationAction.ALREADY_CHOSEN, stored, consent, "the agent already has the user's choice"
        )
        return result, mark
    if stored != "enabled":
        return MigrationResult(MigrationAction.NOT_OPTED_IN, stored, consent), mark
    return None, False


def migrate_printernizer_opt_in(
    db_path: str | os.PathLike[str], agent: LocalAgent, *, mark: bool = True
) -> MigrationResult:
    """Carry Printernizer's stored opt-in (its SQLite database's
    `usage_settings.opt_in_status`) over to the agent, once: if the user had
    opted in there and has made no choice in the agent yet, the agent starts
    sharing (under the first report schema, the one Printernizer's page
    described). A choice already made in the agent is never changed. With
    `mark`, a row `stats_agent_migration` in `usage_settings` records that it was
    done, so later calls do nothing (also after the user opts out again).
    Never raises, whatever `agent.raise_errors` says."""
    path = Path(db_path)
    settings = _read_printernizer_settings(path)
    if (decided := _decide(settings)) is not None:
        return decided
    assert settings is not None
    stored = settings.get("opt_in_status")
    try:
        consent = agent.consent()
        result, done = _after_consent(stored, consent, mark)
        if result is None:
            changed = agent.opt_in(PRINTERNIZER_SCHEMA_VERSION)
            if isinstance(changed, Unavailable):
                return MigrationResult(MigrationAction.FAILED, stored, detail=changed.message)
            result, done = MigrationResult(MigrationAction.OPTED_IN, stored, changed), mark
    except AgentError as exc:
        return MigrationResult(MigrationAction.FAILED, stored, detail=exc.message)
    if done:
        _mark_migrated(path, result.action, dt.datetime.now(dt.UTC))
    return result


async def migrate_printernizer_opt_in_async(
    db_path: str | os.PathLike[str], agent: AsyncLocalAgent, *, mark: bool = True
) -> MigrationResult:
    """`migrate_printernizer_opt_in` for asyncio code (the database is read in a thread)."""
    path = Path(db_path)
    settings = await asyncio.to_thread(_read_printernizer_settings, path)
    if (decided := _decide(settings)) is not None:
        return decided
    assert settings is not None
    stored = settings.get("opt_in_status")
    try:
        consent = await agent.consent()
        result, done = _after_consent(stored, consent, mark)
        if result is None:
            changed = await agent.opt_in(PRINTERNIZER_SCHEMA_VERSION)
            if isinstance(changed, Unavailable):
                return MigrationResult(MigrationAction.FAILED, stored, detail=changed.message)
            result, done = MigrationResult(MigrationAction.OPTED_IN, stored, changed), mark
    except AgentError as exc:
        return MigrationResult(MigrationAction.FAILED, stored, detail=exc.message)
    if done:
        await asyncio.to_thread(_mark_migrated, path, result.action, dt.datetime.now(dt.UTC))
    return result
