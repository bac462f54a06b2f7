"""The agent's behaviour, without gRPC: what each API call does.

The servicer decodes a request, calls one method of `StatsAgent` and encodes
its result; what it refuses it raises as a refusal
(printernizer_stats.common.refusals), which the shared boundary answers with
its status. Tests can drive this class directly.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from google.protobuf import json_format
from printernizer.stats.v1 import (
    agent_service_pb2,
    aggregated_stats_pb2,
    common_pb2,
    ingest_service_pb2,
    usage_event_pb2,
)
from printernizer_stats.common import consent_levels
from printernizer_stats.common.clock import Clock, SystemClock, as_clock
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.common.countries import country_for_timezone
from printernizer_stats.common.events import EARLIEST_EVENT, EventDecoder, from_millis, to_event, to_millis
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.known_fields import discard_unknown_fields, known_fields_only
from printernizer_stats.common.refusals import FailedPrecondition, FieldError, FieldViolation
from printernizer_stats.common.weeks import Week, last_complete_week, weeks_between

from . import consent as consent_mod
from .consent import ConsentRecord, Identity, Override
from .report import (
    APP_STARTED,
    APP_STOPPED,
    FEATURE_DISABLED,
    FEATURE_ENABLED,
    FLEET_OBSERVED,
    ReportScope,
    build_report,
    narrowed,
    weekly_activity,
)
from .storage import AgentStore, BatchIdentity, DeletionRequestRow, OutboxRow, StorageError, disk_full
from .trusted_time import TrustedTime

log = logging.getLogger(__name__)

MAX_LOCAL_WEEKS = 104
DEFAULT_LOCAL_WEEKS = 12
MAX_EXPORT_PAGE = 10_000
DEFAULT_EXPORT_PAGE = 1_000
MAX_LEDGER = 520
DEFAULT_LEDGER = 52
# What one call may report as dropped by its client: a million events a second
# for thirty years, far below what the agent's 64-bit counter holds.
MAX_DROPPED_BY_CLIENT = 10**15
# A recording client's ID: 16 random bytes, made when it starts.
CLIENT_ID_BYTES = 16
# How long the agent remembers a client's last batch after the client was last heard from.
BATCH_MEMORY = dt.timedelta(days=30)
# The newest time the agent has trusted (milliseconds), kept across restarts.
HIGH_WATER = "clock.high_water"
# The first week a report or a preview may cover: the week of the earliest
# event time the agent accepts (before it, there is nothing to count).
FIRST_WEEK = Week.containing(EARLIEST_EVENT)
# A preview for someone who has not opted in: the ID is made at opt-in.
PLACEHOLDER_ID = bytes(16)


class NotSharing(FailedPrecondition):
    """An operation that needs the user to have opted in to sharing."""


@dataclass(frozen=True)
class AgentConfig:
    timezone: str
    retention_days: int
    override: Override
    # The outbox keeps at most this many reports / bytes; the oldest go first.
    outbox_reports: int = 60
    outbox_bytes: int = 600_000


@dataclass(frozen=True)
class RecordResult:
    stored: int
    recording_disabled: bool
    refused: tuple[agent_service_pb2.RefusedEvent, ...] = ()
    duplicate: bool = False  # stored before: this is that first answer


def package_version() -> common_pb2.Version:
    """This software's version as numbers."""
    import importlib.metadata  # only when asked (it loads email, zipfile, csv: 4 MB)

    try:
        text = importlib.metadata.version("printernizer-stats-agent")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return common_pb2.Version()
    numbers = [int(n) for n in re.findall(r"\d+", text)[:3]] + [0, 0, 0]
    return common_pb2.Version(major=numbers[0], minor=numbers[1], patch=numbers[2])


def report_json(report: bytes) -> str:
    """A report's bytes, decoded and rendered as JSON for people to read. A
    part its level does not share is left out, not shown empty: an empty
    list would read as "none", where nothing is said at all."""
    message = aggregated_stats_pb2.AggregatedStats.FromString(report)
    document = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    level = consent_levels.level_of(message)
    hidden = [name for name in consent_levels.LEVEL_OF_FIELD if not consent_levels.shares(level, name)]
    if message.schema_version < consent_levels.SINCE_SCHEMA_VERSION:
        hidden.append("consent_level")  # such a report cannot say it
    for name in hidden:
        document.pop(message.DESCRIPTOR.fields_by_name[name].json_name, None)
    return json.dumps(document, indent=2)


def _batch_identity(client_id: bytes, sequence: int) -> BatchIdentity | None:
    """A batch's identity, or None for a batch without one (a plain gRPC client)."""
    if not client_id and not sequence:
        return None
    if len(client_id) != CLIENT_ID_BYTES:
        raise FieldError("client_id", f"must be {CLIENT_ID_BYTES} bytes when batch_sequence is set")
    if sequence < 1:
        raise FieldError("batch_sequence", "must be 1 or more when client_id is set")
    return BatchIdentity(client_id, sequence)


async def remembered_time(store: AgentStore) -> dt.datetime | None:
    """The newest time an agent on this database has trusted, if any."""
    kept = (await store.settings()).get(HIGH_WATER)
    return from_millis(int(kept)) if kept else None


class StatsAgent:
    def __init__(
        self,
        store: AgentStore,
        config: AgentConfig,
        clock: Clock | Callable[[], dt.datetime] | None = None,
        after_commit: Callable[[], None] | None = None,
        high_water: dt.datetime | None = None,
    ) -> None:
        self.store = store
        self.config = config
        # Every decision reads the time the agent trusts (trusted_time), not the
        # wall clock as it is: `now()` is that time.
        self.clock = as_clock(clock or SystemClock())
        self.time = TrustedTime(self.clock, high_water)
        self.now = self.time.now
        self._after_commit = after_commit  # a failpoint for tests of the real process
        self.country = country_for_timezone(config.timezone)
        self._consent: ConsentRecord | None = None  # cached; the agent is the only writer
        self._storage = agent_service_pb2.STORAGE_CONDITION_OK
        self._storage_since: dt.datetime | None = None
        self._decoder = EventDecoder()
        self._sharing_stopped: list[Callable[[], None]] = []

    # --- consent -----------------------------------------------------------------

    def when_sharing_stops(self, listener: Callable[[], None]) -> None:
        """Call `listener` each time the user stops sharing (an opt-out, or
        deleting everything while sharing), once it is recorded: the courier
        then cancels a submission in flight and sends the deletion request."""
        self._sharing_stopped.append(listener)

    async def consent(self) -> ConsentRecord:
        if self._consent is None:
            self._consent = ConsentRecord.from_settings(await self.store.settings(), self.config.override)
        return self._consent

    async def set_consent(self, state: int, schema_version: int, level: int = 0) -> ConsentRecord:
        """Record the user's choice: `level` (a ConsentLevel; 0 for everything)
        only with SHARING, and below everything only with a schema version that
        has levels (consent.check_choice)."""
        consent_mod.check_choice(state, schema_version, level)
        before = await self.consent()
        now = self.now()
        stops_sharing = before.chosen == consent_mod.SHARING and state != consent_mod.SHARING
        if stops_sharing:
            await self._opt_out(state, now)
        elif state == consent_mod.SHARING and before.chosen == consent_mod.SHARING and before.since_time:
            # Agreeing to a newer disclosure, or choosing another level, keeps
            # the identity and where counting started.
            await self.store.put_settings(
                consent_mod.choice_settings(
                    state, schema_version, level, now, before.since_sequence, before.since_time
                )
            )
        else:
            settings = consent_mod.choice_settings(
                state, schema_version, level, now, await self.store.last_sequence(), now
            )
            if state == consent_mod.SHARING:
                settings.update(Identity.create().settings())
            await self.store.put_settings(settings)
        self._consent = None
        if stops_sharing:
            self._sharing_has_stopped()
        after = await self.consent()
        if before.chosen == after.chosen == consent_mod.SHARING and after.level < before.level:
            await self.queued_reports()  # reports built before leave out what is no longer shared
        return after

    async def _opt_out(self, state: int, now: dt.datetime) -> None:
        """Stop sharing: forget the identity, and keep a signed request that asks
        the server to delete everything it has for it."""
        identity = consent_mod.load_identity(await self.store.settings())
        deletion = None
        if identity is not None:
            order = ingest_service_pb2.DeletionOrder(installation_id=identity.installation_id)
            order.requested_at.FromDatetime(now)
            order_bytes = order.SerializeToString(deterministic=True)
            request = ingest_service_pb2.DeleteInstallationRequest(
                order=order_bytes, signature=identity.sign(order_bytes), public_key=identity.public_key
            )
            deletion = DeletionRequestRow(
                id=0,
                installation_id=identity.installation_id,
                request=request.SerializeToString(deterministic=True),
                created_at=to_millis(now),
                receipt=None,
                confirmed_at=None,
            )
        settings = consent_mod.choice_settings(state, 0, 0, now, await self.store.last_sequence(), now)
        settings[consent_mod.INSTALLATION_ID] = None
        settings[consent_mod.PRIVATE_KEY] = None
        await self.store.opt_out(settings, deletion)

    def _sharing_has_stopped(self) -> None:
        for listener in self._sharing_stopped:
            listener()

    async def identity(self) -> Identity | None:
        return consent_mod.load_identity(await self.store.settings())

    # --- recording -----------------------------------------------------------------

    async def record(
        self,
        events: Sequence[usage_event_pb2.UsageEvent],
        dropped_by_client: int,
        client_id: bytes = b"",
        batch_sequence: int = 0,
    ) -> RecordResult:
        """Store the valid events of a batch; the refused ones come back with
        the field at fault. A batch none of whose events could be stored is
        refused as a whole (FieldError naming every event's field). A batch
        with an identity (client_id, batch_sequence) is stored once: sent
        again, it gets its first answer."""
        consent = await self.consent()
        if not consent.recording:
            return RecordResult(stored=0, recording_disabled=True)
        reading = self.time.read()
        now = reading.trusted
        try:  # the request as a whole
            if dropped_by_client > MAX_DROPPED_BY_CLIENT:
                raise FieldError("dropped_by_client", f"must be at most {MAX_DROPPED_BY_CLIENT:,}")
            batch = _batch_identity(client_id, batch_sequence)
            # Host times come from the same wall clock: checked against it, then
            # moved as the agent's own time is moved (docs/agent.md, "Time").
            decoded = self._decoder.rows(events, reading.wall, reading.shift)
        except FieldError:
            await self.store.add_counter("rejected_events", len(events))
            raise
        try:
            stored = await self.store.append_events(
                decoded.rows,
                to_millis(now),
                dropped_by_client,
                decoded.with_unknown_fields,
                decoded.refused,
                batch,
            )
        except (sqlite3.Error, OSError, StorageError) as exc:
            self._note_storage(
                agent_service_pb2.STORAGE_CONDITION_FULL
                if disk_full(exc)
                else agent_service_pb2.STORAGE_CONDITION_FAILING
            )
            raise
        if self._after_commit is not None:
            self._after_commit()
        self._note_storage(agent_service_pb2.STORAGE_CONDITION_OK)
        if stored.refused and not stored.stored:
            raise FieldError.of(
                FieldViolation(f"events[{r.index}].{r.field}", r.reason) for r in stored.refused
            )
        return RecordResult(stored.stored, False, stored.refused, stored.duplicate)

    async def remember_time(self) -> None:
        """Keep the newest time the agent has trusted, so that after a restart
        its time never runs backwards (trusted_time)."""
        now = to_millis(self.now())
        settings = await self.store.settings()
        if now > int(settings.get(HIGH_WATER, b"0") or 0):
            await self.store.put_settings({HIGH_WATER: str(now).encode()})

    async def forget_old_batches(self) -> int:
        """Forget the batch identities of clients not heard from for a while:
        a client resends within seconds, and a restarted host has a new one."""
        return await self.store.forget_batches_before(to_millis(self.now() - BATCH_MEMORY))

    def _note_storage(self, condition: agent_service_pb2.StorageCondition.ValueType) -> None:
        """Remember whether writes succeed (the status shows it); log each change once."""
        if condition == self._storage:
            return
        if condition == agent_service_pb2.STORAGE_CONDITION_OK:
            log.warning("storage: writes succeed again")
        else:
            log.warning("storage: %s", agent_service_pb2.StorageCondition.Name(condition))
        self._storage, self._storage_since = condition, self.now()

    # --- reports -------------------------------------------------------------------

    async def report_scope(self, week: Week, level: int = 0) -> ReportScope:
        """Whose report and which events count: the real identity and consent
        when sharing; otherwise what opting in now would produce. At `level`
        when one is given (a preview of another choice), else at the level in
        effect (everything when not sharing)."""
        consent = await self.consent()
        identity = await self.identity()
        if consent.sharing and identity is not None and consent.since_time is not None:
            chosen = level or consent.level
            version = consent.schema_version
            if chosen != consent_levels.EVERYTHING:
                # Only a preview can ask this of a consent from before levels:
                # choosing that level means agreeing to a version that has them.
                version = max(version, consent_levels.SINCE_SCHEMA_VERSION)
            return ReportScope(
                installation_id=identity.installation_id,
                report_id=report_id(identity.installation_id, week),
                consented_schema_version=version,
                consent_since=consent.since_time,
                since_sequence=consent.since_sequence,
                country=self.country,
                level=chosen,
            )
        return ReportScope(
            installation_id=PLACEHOLDER_ID,
            report_id=PLACEHOLDER_ID,
            consented_schema_version=CURRENT_SCHEMA_VERSION,
            consent_since=self.now(),
            since_sequence=await self.store.last_sequence(),
            country=self.country,
            level=level or consent_levels.EVERYTHING,
        )

    async def level_in_effect(self) -> int:
        """The parts a report is built with now: the chosen level while sharing,
        else everything (what a preview before opting in shows)."""
        consent = await self.consent()
        return consent.level if consent.sharing else consent_levels.EVERYTHING

    async def next_report_week(self) -> Week:
        """The week the next report covers: the oldest finished week since
        consent that was neither sent nor given up, else the week in progress."""
        now = self.now()
        current = Week.containing(now)
        consent = await self.consent()
        if not consent.sharing or consent.since_time is None:
            return current
        done = await self._weeks_done()
        for week in weeks_between(Week.containing(consent.since_time), current):
            if week.key not in done:
                return week
        return current

    async def _weeks_done(self) -> set[int]:
        """Weeks whose report needs nothing more: sent, or given up (dropped or evicted)."""
        return await self.store.sent_weeks() | await self.store.given_up_weeks()

    async def queue_finished_weeks(self) -> int:
        """Queue the report of every finished week since opting in that is not
        queued, sent or given up yet: its bytes are frozen and signed now, so
        what is sent is exactly what the preview showed. Returns how many were
        queued."""
        consent = await self.consent()
        identity = await self.identity()
        if not consent.sharing or identity is None or consent.since_time is None:
            return 0
        now = self.now()
        # A report frozen before its week was over (the clock was ahead, as the
        # agent found out since) must not be sent: it is built again later.
        early = [row.week for row in await self.store.outbox() if Week.from_key(row.week).end > now]
        if early:
            log.warning(
                "%d queued report(s) are for weeks not over yet; built again when they are", len(early)
            )
            await self.store.unqueue(early)
        last_finished = last_complete_week(now)
        first = Week.containing(consent.since_time)
        if last_finished < first:
            return 0
        await self._rebuild_reports_with_unknown_fields(identity, now)
        done = await self._weeks_done()
        done |= {row.week for row in await self.store.outbox()}
        queued = 0
        for week in weeks_between(first, last_finished):
            if week.key in done:
                continue
            row = self._queue_row(identity, week, now, await self.report_bytes(week))
            await self.store.queue_report(row, self.config.outbox_reports, self.config.outbox_bytes)
            queued += 1
        return queued

    async def _rebuild_reports_with_unknown_fields(self, identity: Identity, now: dt.datetime) -> None:
        """An agent before version 4 of the database copied stored messages into
        the reports it queued, unknown fields and all: such a report is rebuilt
        (field by field) before it can be sent."""
        for row in await self.store.outbox():
            if discard_unknown_fields(aggregated_stats_pb2.AggregatedStats.FromString(row.report)):
                week = Week.from_key(row.week)
                rebuilt = self._queue_row(identity, week, now, await self.report_bytes(week))
                await self.store.replace_queued_report(rebuilt)

    async def queued_reports(self) -> list[OutboxRow]:
        """The outbox as it may be sent: a report built at a higher level than
        the one chosen now (the user lowered it since) is narrowed to it and
        signed again, in the outbox too. Raising the level widens nothing: a
        week is built once, at the level of its time."""
        rows = await self.store.outbox()
        identity = await self.identity()
        consent = await self.consent()
        if consent.chosen != consent_mod.SHARING or identity is None:
            return rows
        sendable = []
        for row in rows:
            report = narrowed(row.report, consent.level)
            if report != row.report:
                row = replace(row, report=report, signature=identity.sign(report))
                await self.store.replace_queued_report(row)
            sendable.append(row)
        return sendable

    @staticmethod
    def _queue_row(identity: Identity, week: Week, now: dt.datetime, report: bytes) -> OutboxRow:
        """A report as queued: its exact bytes, signed."""
        return OutboxRow(
            week.key, report_id(identity.installation_id, week), report, identity.sign(report), to_millis(now)
        )

    async def report_bytes(self, week: Week, level: int = 0) -> bytes:
        """The exact bytes a submission would carry for `week` now (at `level`,
        else at the level in effect)."""
        report = await build_report(self.store, week, await self.report_scope(week, level), self.now())
        return report.SerializeToString(deterministic=True)

    def requested_week(self, year: int, week: int) -> Week:
        """The ISO week a request names, if a report could cover it: from
        FIRST_WEEK to the week in progress."""
        try:
            chosen = Week(year, week)
        except ValueError:
            raise FieldError("week", f"{year}-W{week} is not an ISO week") from None
        if chosen > Week.containing(self.now()):
            raise FieldError("week", f"{chosen} is in the future")
        if chosen < FIRST_WEEK:
            raise FieldError("week", f"{chosen} is before {FIRST_WEEK}, the week of the earliest event")
        return chosen

    async def preview_requested(
        self, requested: common_pb2.IsoWeek | None, level: int = 0
    ) -> tuple[Week, bytes]:
        """PreviewReport: the report of the week a request names (if a report
        could cover it: requested_week), else of the next report's week; at
        `level` when one is given (a ConsentLevel)."""
        consent_mod.check_level(level)
        week = None if requested is None else self.requested_week(requested.year, requested.week)
        return await self.preview(week, level)

    async def preview(self, week: Week | None, level: int = 0) -> tuple[Week, bytes]:
        """The exact bytes of a report as `level` (else the level in effect)
        would send it: a queued week's frozen bytes, narrowed to the level
        when it is lower than theirs, else the report as it would be built
        now. `week` comes from requested_week."""
        level = level or await self.level_in_effect()
        queued = {row.week: row.report for row in await self.store.outbox()}
        if week is None and queued:
            oldest = min(queued)
            return Week.from_key(oldest), narrowed(queued[oldest], level)
        chosen = week or await self.next_report_week()
        if chosen.key in queued:
            return chosen, narrowed(queued[chosen.key], level)
        return chosen, await self.report_bytes(chosen, level)

    # --- the user's own view ---------------------------------------------------------

    async def local_activity(self, weeks: int) -> list[agent_service_pb2.WeeklyActivity]:
        """The last `weeks` weeks, oldest first, ending with the current week."""
        if weeks == 0:
            weeks = DEFAULT_LOCAL_WEEKS
        if not 1 <= weeks <= MAX_LOCAL_WEEKS:
            raise FieldError("weeks", f"must be between 1 and {MAX_LOCAL_WEEKS}")
        now = self.now()
        current = Week.containing(now)
        first = Week.containing(current.start - dt.timedelta(weeks=weeks - 1))
        # A pruning pass may commit while this reads week by week (it writes a
        # week's summary and deletes its events in one transaction): read again
        # until no summary changed meanwhile, so no week is read half each way.
        kept = await self.store.week_summaries()
        while True:
            activity = []
            for week in weeks_between(first, current):
                if week.key in kept:
                    activity.append(agent_service_pb2.WeeklyActivity.FromString(kept[week.key]))
                else:
                    activity.append(await weekly_activity(self.store, week, now))
            after = await self.store.week_summaries()
            if after == kept:
                return activity
            kept = after

    async def local_stats(self, weeks: int) -> agent_service_pb2.GetLocalStatsResponse:
        activity = await self.local_activity(weeks)
        consent = await self.consent()
        current = Week.containing(self.now())
        scope = await self.report_scope(current)
        report = await build_report(self.store, current, scope, self.now())
        response = agent_service_pb2.GetLocalStatsResponse(
            consent=consent.to_proto(),
            installation=report.installation,
            this_week=activity[-1],
            recent_weeks=activity,
        )
        if scope.installation_id == PLACEHOLDER_ID:
            response.installation.ClearField("installation_id")
        for kind, count in await self.store.event_totals():
            response.totals.add(kind=agent_service_pb2.EventKind.ValueType(kind), count=count)
        first = await self.store.first_seen()
        if first is not None:
            response.first_seen.FromDatetime(from_millis(first))
        last = await self.store.last_sent_at()
        if last is not None:
            response.last_submission.FromDatetime(from_millis(last))
        return response

    async def export(self, page_size: int) -> AsyncIterator[agent_service_pb2.ExportDataResponse]:
        if page_size == 0:
            page_size = DEFAULT_EXPORT_PAGE
        if not 1 <= page_size <= MAX_EXPORT_PAGE:
            raise FieldError("page_size", f"must be between 1 and {MAX_EXPORT_PAGE}")
        first = agent_service_pb2.ExportDataResponse(settings=await self.settings_view())
        first.sent_reports.extend(await self.ledger(MAX_LEDGER))
        first.deletion_receipts.extend(await self.deletion_receipts())
        pending: agent_service_pb2.ExportDataResponse | None = first
        async for page in self.store.export_events(page_size):
            message = pending or agent_service_pb2.ExportDataResponse()
            pending = None
            for stored in page:
                item = message.events.add(sequence=stored.seq, event=to_event(stored.row))
                item.recorded_at.FromMilliseconds(stored.recorded_at)
            yield message
        if pending is not None:
            yield pending

    async def settings_view(self) -> agent_service_pb2.AgentSettings:
        identity = await self.identity()
        settings = agent_service_pb2.AgentSettings(
            consent=(await self.consent()).to_proto(),
            retention_days=self.config.retention_days,
            time_zone=self.config.timezone,
        )
        if identity is not None:
            settings.installation_id = identity.installation_id
            settings.public_key = identity.public_key
        return settings

    async def ledger(self, limit: int) -> list[agent_service_pb2.SentReport]:
        if limit == 0:
            limit = DEFAULT_LEDGER
        if not 1 <= limit <= MAX_LEDGER:
            raise FieldError("limit", f"must be between 1 and {MAX_LEDGER}")
        reports = []
        for row in await self.store.sent_reports(limit):
            sent = agent_service_pb2.SentReport(
                week=Week.from_key(row.week).to_proto(),
                report=row.report,
                # Field by field: an older agent stored receipts as the server sent them.
                receipt=known_fields_only(ingest_service_pb2.ReportReceipt.FromString(row.receipt)),
            )
            sent.sent_at.FromMilliseconds(row.sent_at)
            reports.append(sent)
        return reports

    async def sent_reports(self, limit: int) -> agent_service_pb2.ListSentReportsResponse:
        """ListSentReports: the newest `limit` reports sent, and every deletion receipt."""
        return agent_service_pb2.ListSentReportsResponse(
            reports=await self.ledger(limit), deletion_receipts=await self.deletion_receipts()
        )

    async def deletion_receipts(self) -> list[ingest_service_pb2.DeleteInstallationResponse]:
        return [
            known_fields_only(ingest_service_pb2.DeleteInstallationResponse.FromString(row.receipt))
            for row in await self.store.deletion_requests()
            if row.receipt is not None
        ]

    async def delete_all(self) -> tuple[int, int]:
        """Delete every event, report and setting. A user who was sharing is
        opted out first, so the server's copy is deleted too; the consent
        choice itself is kept (deleting data is not a change of mind)."""
        consent = await self.consent()
        queued = len(await self.store.outbox())  # queued reports are deleted too (by the opt-out or below)
        stops_sharing = consent.chosen == consent_mod.SHARING
        if stops_sharing:
            await self._opt_out(consent_mod.LOCAL_ONLY, self.now())
        events, reports = await self.store.delete_all(keep_settings=consent_mod.CONSENT_KEYS)
        self._consent = None
        if stops_sharing:
            self._sharing_has_stopped()
        return events, reports + queued

    async def status(self) -> agent_service_pb2.GetStatusResponse:
        counters = await self.store.counters()
        status = agent_service_pb2.GetStatusResponse(
            consent=(await self.consent()).to_proto(),
            stored_events=await self.store.event_count(),
            rejected_events=counters.get("rejected_events", 0),
            events_with_unknown_fields=counters.get("events_with_unknown_fields", 0),
            dropped_events=counters.get("dropped_events", 0),
            evicted_reports=counters.get("evicted_reports", 0),
            dropped_reports=counters.get("dropped_reports", 0),
            queued_reports=len(await self.store.outbox()),
            last_outcome=agent_service_pb2.DELIVERY_OUTCOME_NONE,
            agent_version=package_version(),
            storage=self._storage,
        )
        if self._storage != agent_service_pb2.STORAGE_CONDITION_OK and self._storage_since is not None:
            status.storage_condition_since.FromDatetime(self._storage_since)
        last = await self.store.last_sent_at()
        if last is not None:
            status.last_submission.FromDatetime(from_millis(last))
        settings = await self.store.settings()
        if "delivery.last_attempt" in settings:
            status.last_attempt.FromDatetime(from_millis(int(settings["delivery.last_attempt"].decode())))
            status.last_outcome = agent_service_pb2.DeliveryOutcome.ValueType(
                int(settings["delivery.last_outcome"].decode())
            )
            status.last_failure_code = settings["delivery.last_failure_code"].decode()
        return status

    # --- retention -------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete the raw events dated before the retention cutoff (the start of
        the week `retention_days` ago), except the state in force at the
        cutoff, keeping each pruned week's figures for the user's own view."""
        now = self.now()
        cutoff = Week.containing(now - dt.timedelta(days=self.config.retention_days))
        cutoff_ms = to_millis(cutoff.start)
        keep = await self._state_in_force(cutoff_ms)
        if await self.store.count_events_before(cutoff_ms) <= len(keep):
            return 0  # nothing before the cutoff but the state in force
        first = await self.store.first_week_with_events()
        assert first is not None  # there are events before the cutoff
        kept = await self.store.week_summaries()
        summaries = {}
        for week in weeks_between(Week.containing(from_millis(first)), cutoff.previous()):
            if week.key not in kept:
                summary = await weekly_activity(self.store, week, now)
                summaries[week.key] = summary.SerializeToString(deterministic=True)
        deleted = await self.store.prune_events_before(cutoff_ms, summaries, keep)
        if deleted:
            log.info("pruned %d events older than %s", deleted, cutoff.start.date())
        return deleted

    async def _state_in_force(self, moment: int) -> set[int]:
        """The sequence numbers of the events that say what held at `moment`: the
        latest app start, app stop and fleet, and each feature's latest setting.
        A report reads runs only from the starts and stops stored after opting
        in, so the latest of those stay too."""
        runs = (APP_STARTED, APP_STOPPED)
        latest = [await self.store.latest_of_kind(kind, moment) for kind in (*runs, FLEET_OBSERVED)]
        consent = await self.consent()
        if consent.chosen == consent_mod.SHARING:
            latest += [await self.store.latest_of_kind(kind, moment, consent.since_sequence) for kind in runs]
        keep = {row.seq for row in latest if row is not None}
        keep.update(await self.store.latest_sequences_per_value((FEATURE_ENABLED, FEATURE_DISABLED), moment))
        return keep
