"""Printernizer's privacy API and page, served by the host app over its local
agent (the `fastapi` extra of the SDK):

    from printernizer_stats.sdk.fastapi import usage_stats_router

    app.include_router(usage_stats_router(), prefix="/api/v1/usage-stats")

It answers Printernizer's existing paths with their existing JSON shapes, so its
frontend (frontend/js/usage-statistics.js) works unchanged:

| method and path | what |
| --- | --- |
| `GET /status` | `{service_available, opted_in, total_events, collection_active}`, always 200 |
| `GET /local` | `{installation_id, first_seen, opt_in_status, total_events, this_week, last_submission}` |
| `POST /opt-in`, `POST /opt-out` | `{success, installation_id, message}`; no body needed |
| `GET /export` | everything the agent keeps, as the file `usage-statistics-export.json` |
| `DELETE` on the prefix itself | `{success, deleted_events, message}` |

An opt-in's answer also says the `level` shared (null unless sharing; `GET
/details` has it in the consent too). An opt-in's body may name the
disclosure's version shown and how much to share: `{"schema_version": 3,
"level": "usage"}`, the level one of LEVELS (`basics`, `printers_and_features`,
`usage`, `errors`: everything, also without a level); the same while sharing
changes the level.

It adds `GET /preview` (the next report; with `?level=`, as that level would
send it), `GET /ledger` (the reports sent),
`GET /disclosure` (what a report contains and why), `GET /details` (the agent's
full local figures and status) and the privacy page at `GET /page`, in English
and German (`?lang=`, else Accept-Language).

Errors are `HTTPException`s (the host's handler shapes them): 503 when the agent
is not running, 400 for a bad parameter or body, 403 for a change sent by
another site, 413/415 for a body that is too large or not JSON. The router has
no loopback rule of its own: it is served behind the host's own access control.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from printernizer.stats.v1 import agent_service_pb2 as agent_api
from printernizer_stats.common import consent_levels
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.common.http_status import http_status_of
from printernizer_stats.common.weeks import Week

from .i18n import choose_language, disclosure_document, gettext_for
from .local import PRINTERNIZER_SCHEMA_VERSION, AgentError, AsyncLocalAgent, unwrap

__all__ = ["LEVELS", "MAX_BODY_BYTES", "usage_stats_router"]

MAX_BODY_BYTES = 4096
MAX_WEEKS, MAX_LIMIT = 104, 520
EXPORT_FILENAME = "usage-statistics-export.json"
EXPORT_VERSION = "2.0"  # Printernizer's own export was "1.0"
NOT_GENERATED = "not_generated"  # Printernizer's installation_id before any opt-in
_WEEK = re.compile(r"([0-9]{4})-W([0-9]{2})")
_COUNT = re.compile(r"[0-9]{1,6}")
# Content types a cross-site HTML form (or a no-CORS fetch) can send without asking.
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_ASSETS = {"privacy.js": "text/javascript; charset=utf-8", "privacy.css": "text/css; charset=utf-8"}
_WEB = files("printernizer_stats.sdk") / "web"
_TEMPLATE_PART = re.compile(r'\{\{\s*(?:_\("((?:[^"\\]|\\.)*)"\)|(lang|messages))\s*\}\}')
_SCRIPT_MESSAGE = re.compile(r'\b_\(\s*"((?:[^"\\]|\\.)*)"')
NO_STORE = {"Cache-Control": "no-store"}
# The consent levels by the names the API uses ("printers_and_features"), lowest first.
LEVELS: dict[str, int] = {
    consent_levels.ConsentLevel.Name(level).removeprefix("CONSENT_LEVEL_").lower(): level
    for level in consent_levels.LEVELS
}
_LEVEL_NAMES = {number: name for name, number in LEVELS.items()}

LangParam = Annotated[str | None, Query(description="the language: en or de (else Accept-Language)")]
AcceptLanguage = Annotated[str | None, Header()]


def _language(lang: LangParam = None, accept_language: AcceptLanguage = None) -> str:
    return choose_language(lang, accept_language)


Language = Annotated[str, Depends(_language)]


def _no_store(response: Response) -> None:
    """Figures about this installation are never cached."""
    response.headers["Cache-Control"] = "no-store"


def _naive_utc(stamp: timestamp_pb2.Timestamp) -> str:
    """Printernizer's time format: naive UTC, ISO 8601, no offset."""
    return stamp.ToDatetime().isoformat()


def _json_of(message: Message, snake_case: bool = False) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=snake_case
    )


def _installation_id(raw: bytes) -> str | None:
    return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else None


def _count(value: str | None, name: str, most: int, _: Any) -> int:
    """A bounded count parameter (decimal digits only); 0 when absent."""
    if value is None:
        return 0
    if not _COUNT.fullmatch(value) or not 1 <= int(value) <= most:
        raise HTTPException(
            400, _("{name} must be a whole number from 1 to {most}").format(name=name, most=most)
        )
    return int(value)


def _refusal(error: AgentError, _: Any) -> HTTPException:
    """An agent's failure as an HTTP error: 503 when it cannot be reached."""
    if error.unreachable:
        return HTTPException(503, _("The statistics agent is not running."))
    status = http_status_of(error.code)
    named = not error.field or error.message.startswith(f"{error.field}:")  # the agent's own often is
    detail = error.message if named else f"{error.field}: {error.message}"
    return HTTPException(status if status != 500 else 502, detail)


async def _guard_change(request: Request, language: Language) -> None:
    """A change (POST, DELETE) sent by another site's page is refused: browsers
    say where a request comes from (Sec-Fetch-Site), and a cross-site form can
    only send form content types."""
    _ = gettext_for(language)
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise HTTPException(403, _("Changes are accepted only from this app's own pages."))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _FORM_TYPES:
        raise HTTPException(415, _("The body must be JSON, or empty."))


async def _small_body(request: Request, _: Any) -> bytes:
    """The body, refused (413) as soon as it passes MAX_BODY_BYTES."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise HTTPException(413, _("The body is larger than {limit} bytes.").format(limit=MAX_BODY_BYTES))
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, _("The body is larger than {limit} bytes.").format(limit=MAX_BODY_BYTES))
    return body


def _level(value: object, _: Any) -> int:
    """A level as the API names it (LEVELS), as a ConsentLevel."""
    if not isinstance(value, str) or value not in LEVELS:
        raise HTTPException(400, _("level must be one of: {names}").format(names=", ".join(LEVELS)))
    return LEVELS[value]


def _level_name(consent: agent_api.Consent) -> str | None:
    """The level shared, as the API names it; None unless sharing."""
    if consent.effective != agent_api.CONSENT_STATE_SHARING:
        return None
    return _LEVEL_NAMES.get(consent.level)


async def _choice(request: Request, _: Any) -> tuple[int | None, int | None]:
    """The disclosure version the user saw and the level chosen, each when a
    JSON body says so (`{"schema_version": N, "level": "usage"}`), else None
    (Printernizer's own page sends no body)."""
    body = await _small_body(request, _)
    if not body.strip():
        return None, None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(415, _("The body must be JSON, or empty."))
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # too deep: not a 500
        raise HTTPException(400, _("The body is not valid JSON.")) from exc
    if not isinstance(document, dict):
        raise HTTPException(400, _("The body must be a JSON object."))
    # Other keys are ignored, as Printernizer ignored any body.
    level = _level(document["level"], _) if "level" in document else None
    if "schema_version" not in document:
        return None, level
    version = document["schema_version"]
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or not 1 <= version <= CURRENT_SCHEMA_VERSION
    ):
        raise HTTPException(
            400,
            _("schema_version must be a whole number from 1 to {most}").format(most=CURRENT_SCHEMA_VERSION),
        )
    return version, level


# --- the page ----------------------------------------------------------------------------


@functools.cache
def _script_messages() -> tuple[str, ...]:
    """The msgids privacy.js translates (its `_("...")` calls)."""
    script = (_WEB / "privacy.js").read_text(encoding="utf-8")
    return tuple(dict.fromkeys(json.loads(f'"{m}"') for m in _SCRIPT_MESSAGE.findall(script)))


@functools.cache
def render_page(language: str) -> str:
    """privacy.html in `language`: each `{{ _("...") }}` replaced by its
    translation, and the script's translations embedded as JSON data."""
    _ = gettext_for(language)
    messages = {msgid: _(msgid) for msgid in _script_messages()}
    # JSON inside <script type="application/json">: no "<" may end the element early.
    embedded = json.dumps(messages, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")

    def part(match: re.Match[str]) -> str:
        if match[1] is not None:
            return html.escape(_(json.loads(f'"{match[1]}"')), quote=True)
        return language if match[2] == "lang" else embedded.replace("&", "\\u0026")

    template = (_WEB / "privacy.html").read_text(encoding="utf-8")
    return _TEMPLATE_PART.sub(part, template)


# --- the export ----------------------------------------------------------------------------


def _event_item(stored: agent_api.StoredEvent, sent_weeks: set[Week]) -> dict[str, Any]:
    """One stored event in the shape of Printernizer's export (`id`, `event_type`,
    `timestamp`, `metadata`, `submitted`, `created_at`). `submitted` is 1 when the
    report of the event's week was sent (events are sent only as weekly counts)."""
    event = stored.event
    kind = event.WhichOneof("kind") or "unknown"
    occurred = event.occurred_at if event.HasField("occurred_at") else stored.recorded_at
    metadata = _json_of(getattr(event, kind), snake_case=True) if kind != "unknown" else {}
    week = Week.containing(occurred.ToDatetime(dt.UTC))
    return {
        "id": str(stored.sequence),
        "event_type": kind,
        "timestamp": _naive_utc(occurred),
        "metadata": metadata or None,
        "submitted": 1 if week in sent_weeks else 0,
        "created_at": _naive_utc(stored.recorded_at),
    }


async def _export_body(
    first: agent_api.ExportDataResponse, rest: AsyncGenerator[agent_api.ExportDataResponse, None]
) -> AsyncIterator[str]:
    sent_weeks = {Week.from_proto(report.week) for report in first.sent_reports}
    head = {
        "export_version": EXPORT_VERSION,
        "exported_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(),
        "settings": _json_of(first.settings, snake_case=True),
        "installation_id": _installation_id(first.settings.installation_id),
        "sent_reports": [_json_of(report, snake_case=True) for report in first.sent_reports],
        "deletion_receipts": [_json_of(receipt, snake_case=True) for receipt in first.deletion_receipts],
    }
    yield json.dumps(head, indent=2)[:-2] + ',\n  "events": ['
    separator = "\n    "
    page: agent_api.ExportDataResponse | None = first
    try:
        while page is not None:
            for stored in page.events:
                yield separator + json.dumps(_event_item(stored, sent_weeks))
                separator = ",\n    "
            page = await anext(rest, None)
    finally:
        await rest.aclose()  # a download given up ends the agent's stream too
    yield "\n  ]\n}\n"


# --- the router ------------------------------------------------------------------------------


def usage_stats_router(
    socket_path: str | None = None,
    *,
    agent: AsyncLocalAgent | None = None,
    bodiless_opt_in_schema_version: int = PRINTERNIZER_SCHEMA_VERSION,
    page: bool = True,
) -> APIRouter:
    """The privacy API (and, with `page`, the privacy page) over the local agent
    at `socket_path` (default: $STATS_AGENT_SOCKET, else the agent's default), or
    over `agent`. Mount it with a prefix: `DELETE` is answered on the prefix itself.

    An opt-in without a body (Printernizer's own page sends none) agrees to the
    report schema `bodiless_opt_in_schema_version`: the one Printernizer's page
    described (the first). The SDK's page sends the version it showed."""
    client = agent if agent is not None else AsyncLocalAgent(socket_path, raise_errors=True)
    if not client.raise_errors:
        client = AsyncLocalAgent(
            client.socket_path, raise_errors=True, timeout=client.timeout, interceptors=client.interceptors
        )
    router = APIRouter(tags=["usage statistics"])
    no_store = [Depends(_no_store)]
    changes = [Depends(_no_store), Depends(_guard_change)]

    @router.get("/status", dependencies=no_store)
    async def status(language: Language) -> dict[str, Any]:
        """Whether the agent answers and the user shares. Always 200."""
        try:
            answer = unwrap(await client.status())
        except AgentError as exc:
            found: dict[str, Any] = {
                "service_available": False,
                "opted_in": False,
                "total_events": 0,
                "collection_active": False,
            }
            if not exc.unreachable:
                found["error"] = exc.message
            return found
        return {
            "service_available": True,
            "opted_in": answer.consent.effective == agent_api.CONSENT_STATE_SHARING,
            "total_events": answer.stored_events,
            "collection_active": answer.consent.effective != agent_api.CONSENT_STATE_DISABLED,
        }

    @router.get("/local", dependencies=no_store)
    async def local(language: Language) -> dict[str, Any]:
        """Printernizer's "your local statistics". `this_week` is the current ISO
        week (Monday on, UTC), not the last seven days."""
        _ = gettext_for(language)
        try:
            stats = unwrap(await client.local_stats(weeks=1))
            state = unwrap(await client.status())
        except AgentError as exc:
            raise _refusal(exc, _) from None
        week = stats.this_week
        last = state.last_submission if state.HasField("last_submission") else stats.last_submission
        return {
            "installation_id": _installation_id(stats.installation.installation_id) or NOT_GENERATED,
            "first_seen": _naive_utc(stats.first_seen) if stats.HasField("first_seen") else None,
            "opt_in_status": "enabled"
            if stats.consent.effective == agent_api.CONSENT_STATE_SHARING
            else "disabled",
            "total_events": state.stored_events,
            "this_week": {
                "job_count": week.usage.jobs_completed + week.usage.jobs_failed,
                "file_count": week.usage.files_downloaded,
                "error_count": sum(error.count for error in week.errors),
            },
            "last_submission": _naive_utc(last) if last.seconds or last.nanos else None,
        }

    @router.post("/opt-in", dependencies=changes)
    async def opt_in(request: Request, language: Language) -> dict[str, Any]:
        """Start sharing, or share at another level. No body is needed (then
        everything is shared); `{"schema_version": N, "level": "usage"}` names
        the disclosure's version the user saw and how much to share."""
        _ = gettext_for(language)
        version, level = await _choice(request, _)
        try:
            consent = unwrap(await client.consent())
            sharing = consent.chosen == agent_api.CONSENT_STATE_SHARING
            # Printernizer's page sends no version: for a user who shares already
            # that changes nothing (it never lowers a version agreed on the SDK's page),
            # and a new level alone keeps the version agreed.
            if version is not None or level is not None or not sharing:
                agreed = consent.consented_schema_version if sharing else bodiless_opt_in_schema_version
                consent = unwrap(await client.opt_in(version or agreed, level or 0))
            if consent.effective != agent_api.CONSENT_STATE_SHARING:
                return {"success": False, "installation_id": None, "message": _overridden(consent, _)}
            stats = unwrap(await client.local_stats(weeks=1))
        except AgentError as exc:
            raise _refusal(exc, _) from None
        return {
            "success": True,
            "installation_id": _installation_id(stats.installation.installation_id),
            "level": _level_name(consent),
            "message": _("Usage statistics enabled. Thank you for helping improve Printernizer!"),
        }

    @router.post("/opt-out", dependencies=changes)
    async def opt_out(request: Request, language: Language) -> dict[str, Any]:
        """Stop sharing: the agent asks the server to delete what was sent, and
        forgets the anonymous identity; local figures stay."""
        _ = gettext_for(language)
        await _small_body(request, _)  # any body is ignored, as Printernizer did
        try:
            await client.opt_out()
        except AgentError as exc:
            raise _refusal(exc, _) from None
        return {
            "success": True,
            "installation_id": None,
            "message": _(
                "Usage statistics disabled. Your data stays on this computer, and the server is asked "
                "to delete what this installation sent."
            ),
        }

    @router.delete("", dependencies=changes)
    async def delete_all(language: Language) -> dict[str, Any]:
        """Delete everything the agent keeps on this computer. The user's choice
        is kept: when sharing, the server is asked to delete what was sent and
        sharing goes on under a new anonymous identity."""
        _ = gettext_for(language)
        try:
            before = unwrap(await client.consent())
            deleted = unwrap(await client.delete_all())
        except AgentError as exc:
            raise _refusal(exc, _) from None
        message = _("All local statistics have been deleted.")
        if before.chosen == agent_api.CONSENT_STATE_SHARING:
            version = before.consented_schema_version or bodiless_opt_in_schema_version
            try:
                await client.opt_in(version, before.level)
            except AgentError:
                message += " " + _("Sharing has stopped: switch it on again to go on sharing.")
        return {"success": True, "deleted_events": deleted.events_deleted, "message": message}

    @router.get("/export")
    async def export(language: Language) -> StreamingResponse:
        """Everything the agent keeps, as a JSON file, streamed page by page."""
        _ = gettext_for(language)
        pages = client.export_pages()
        try:
            first = await anext(pages)  # fail before the download starts
        except StopAsyncIteration:
            first = agent_api.ExportDataResponse()
        except AgentError as exc:
            raise _refusal(exc, _) from None
        return StreamingResponse(
            _export_body(first, pages),
            media_type="application/json",
            headers={"Content-Disposition": f"attachment; filename={EXPORT_FILENAME}", **NO_STORE},
        )

    @router.get("/preview", dependencies=no_store)
    async def preview(
        language: Language,
        week: Annotated[str | None, Query()] = None,
        level: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        """The next report: its exact bytes (base64) and the same read as JSON
        (`week`, as 2026-W46: another week's; `level`, one of LEVELS: as that
        level would send it, else the level in effect)."""
        _ = gettext_for(language)
        chosen_level = _level(level, _) if level is not None else 0
        chosen = None
        if week is not None:
            match = _WEEK.fullmatch(week)
            try:
                chosen = Week(int(match[1]), int(match[2])).to_proto() if match else None
            except ValueError:
                chosen = None
            if chosen is None:
                raise HTTPException(400, _("week must be an ISO week such as 2026-W46"))
        try:
            return _json_of(unwrap(await client.preview(chosen, chosen_level)))
        except AgentError as exc:
            raise _refusal(exc, _) from None

    @router.get("/ledger", dependencies=no_store)
    async def ledger(language: Language, limit: Annotated[str | None, Query()] = None) -> dict[str, Any]:
        """Every report that was sent (newest first, `limit` 1-520), with the
        server's receipts, and the receipts of deletion requests."""
        _ = gettext_for(language)
        count = _count(limit, "limit", MAX_LIMIT, _)
        try:
            return _json_of(unwrap(await client.sent_reports(count)))
        except AgentError as exc:
            raise _refusal(exc, _) from None

    @router.get("/details", dependencies=no_store)
    async def details(language: Language, weeks: Annotated[str | None, Query()] = None) -> dict[str, Any]:
        """The agent's own figures and status for the privacy page (`weeks` 1-104,
        default 12): `{"stats": GetLocalStatsResponse, "status": GetStatusResponse}`."""
        _ = gettext_for(language)
        count = _count(weeks, "weeks", MAX_WEEKS, _) or 12
        try:
            stats = unwrap(await client.local_stats(count))
            state = unwrap(await client.status())
        except AgentError as exc:
            raise _refusal(exc, _) from None
        return {"stats": _json_of(stats), "status": _json_of(state)}

    @router.get("/disclosure", dependencies=no_store)
    async def what_is_collected(language: Language) -> dict[str, Any]:
        """What a report contains and why, generated from the contract, and what
        it can never contain, in the chosen language."""
        return disclosure_document(language)

    if page:

        @router.get("/page", include_in_schema=False)
        async def privacy_page(language: Language) -> Response:
            return Response(
                render_page(language),
                media_type="text/html; charset=utf-8",
                headers={"Content-Language": language, "Vary": "Accept-Language", **NO_STORE},
            )

        @router.get("/page/{asset}", include_in_schema=False)
        async def page_asset(asset: str) -> Response:
            if asset not in _ASSETS:
                raise HTTPException(404, "Not Found")
            return Response((_WEB / asset).read_bytes(), media_type=_ASSETS[asset])

    return router


def _overridden(consent: agent_api.Consent, _: Any) -> str:
    """Why sharing is not in effect although the user chose it."""
    if consent.reason == agent_api.CONSENT_REASON_DO_NOT_TRACK:
        return str(_("Sharing cannot start: DO_NOT_TRACK is set on this computer."))
    if consent.reason == agent_api.CONSENT_REASON_AGENT_SWITCH:
        return str(_("Sharing cannot start: the statistics agent is switched off by its own setting."))
    return str(_("Sharing is not in effect."))
