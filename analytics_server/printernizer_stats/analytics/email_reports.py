"""E-mail reports: a weekly summary (Mondays) and a monthly report (the 1st).

Both are built from the answers the dashboard shows (`Analytics.overview`,
`release_health` and `usage`), so a report cannot show zeros where the
dashboard shows data, and small groups are folded the same way. Every value goes through Jinja2's HTML
autoescaping. Recipients come only from the configuration. Each report is
claimed in the database before it is sent, so several analytics replicas and
restarts send it once; a failed send releases the claim and is tried again
at the next turn, logged as one line and counted (stats.email.reports),
never crashing the server.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import jinja2
from opentelemetry import metrics
from printernizer.stats.v1 import analytics_service_pb2
from printernizer_stats.common.weeks import Week, last_complete_week
from printernizer_stats.store.mail_claims_store import MailClaimsStore

from .queries import Analytics

log = logging.getLogger(__name__)

WEEKLY, MONTHLY = 1, 2
# Reports go out at this hour (UTC) on Mondays and on the 1st.
SEND_HOUR = 6
SECURITY_MODES = ("starttls", "ssl", "none")

EMAILS = metrics.get_meter("printernizer_stats.analytics_server").create_counter(
    "stats.email.reports",
    unit="{report}",
    description="e-mail reports, by kind (weekly, monthly) and outcome: sent, or failed (tried again later)",
)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("printernizer_stats.analytics", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True),
    undefined=jinja2.StrictUndefined,  # a missing figure is an error, never a silent blank or zero
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class MailConfig:
    host: str
    port: int
    security: str  # starttls | ssl | none
    sender: str
    recipients: tuple[str, ...]
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str | None = None  # the CA that signs the SMTP server's certificate (system CAs when None)
    timeout: float = 30.0


@dataclass(frozen=True)
class Report:
    subject: str
    text: str
    html: str


def _percent(share: float) -> str:
    return f"{share * 100:.1f} %"


def _name(enum: Any, number: int, prefix: str) -> str:
    return str(enum.Name(number)).removeprefix(prefix).lower().replace("_", " ")


@dataclass(frozen=True)
class Answers:
    """What a report is made of: the dashboard's answers for its weeks."""

    overview: analytics_service_pb2.GetOverviewResponse
    release_health: analytics_service_pb2.GetReleaseHealthResponse
    usage: analytics_service_pb2.GetUsageResponse
    deployment_errors: analytics_service_pb2.GetErrorRatesResponse
    features_by_version: analytics_service_pb2.GetFeatureAdoptionByVersionResponse


async def answers(analytics: Analytics, window: analytics_service_pb2.WeekWindow) -> Answers:
    """The overview and usage of `window`, and release health over its last weeks."""
    health_window = analytics_service_pb2.WeekWindow(until=window.until)
    return Answers(
        await analytics.overview(analytics_service_pb2.GetOverviewRequest(window=window)),
        await analytics.release_health(analytics_service_pb2.GetReleaseHealthRequest(window=health_window)),
        await analytics.usage(analytics_service_pb2.GetUsageRequest(window=window)),
        await analytics.error_rates(
            analytics_service_pb2.GetErrorRatesRequest(window=window, by_deployment_mode=True)
        ),
        await analytics.feature_adoption_by_version(
            analytics_service_pb2.GetFeatureAdoptionByVersionRequest(week=window.until)
        ),
    )


def _release_rows(health: analytics_service_pb2.GetReleaseHealthResponse) -> list[dict[str, Any]]:
    return [
        {
            "version": release.version.label,
            "installations": release.installations,
            "crash_free": "too few to show"
            if release.crash_free_suppressed
            else _percent(release.crash_free_rate),
            "job_success": _percent(release.job_success_rate),
            "errors": f"{release.errors_per_installation:.2f}",
            "uptime": f"{release.uptime_hours_per_installation:.0f}",
            "previous": release.previous.label if release.HasField("previous") else "",
            "regressions": [
                f"{_name(analytics_service_pb2.ReleaseMetric, r.metric, 'RELEASE_METRIC_')} "
                f"({_name(analytics_service_pb2.Severity, r.severity, 'SEVERITY_')}): "
                f"{r.observed:.4g} against {r.previous:.4g}"
                for r in release.regressions
            ],
        }
        for release in health.releases
    ]


def _usage_rows(usage: analytics_service_pb2.GetUsageResponse) -> list[dict[str, Any]]:
    return [
        {
            "week": str(Week.from_proto(w.week)),
            "completed": w.jobs_completed,
            "failed": w.jobs_failed,
            "success": _percent(w.job_success_rate),
            "files": w.files_downloaded + w.files_uploaded,
            "disconnections": f"{w.disconnections_per_connection:.2f}",
            "crash_free": "too few to show" if w.crash_free_suppressed else _percent(w.crash_free_rate),
        }
        for w in usage.weeks
    ]


def _printer_job_rows(usage: analytics_service_pb2.GetUsageResponse) -> list[dict[str, Any]]:
    """The last week's completed and failed jobs per printer family (families
    with completed jobs published that week; failed ones where published too:
    none, or too few to publish, reads "none shown")."""
    failed = {
        tuple(v.label for v in s.values): s.points[-1]
        for s in usage.failed_jobs_by_printer_type
        if s.points and not s.points[-1].suppressed
    }
    rows = []
    for series in usage.completed_jobs_by_printer_type:
        point = series.points[-1] if series.points else None
        if point is None or point.suppressed:
            continue
        lost = failed.get(tuple(v.label for v in series.values))
        rows.append(
            {
                "label": " / ".join(v.label for v in series.values),
                "installations": point.installations,
                "completed": point.count,
                "failed": lost.count if lost else "none shown",
                "failed_share": _percent(lost.count / (lost.count + point.count)) if lost else "",
            }
        )
    return rows


def _deployment_error_rows(rates: analytics_service_pb2.GetErrorRatesResponse) -> list[dict[str, Any]]:
    """The last week's error rates per deployment mode and version (those published that week)."""
    rows = []
    for series in rates.series:
        point = series.points[-1] if series.points else None
        if point is None or point.suppressed:
            continue
        rows.append(
            {
                "label": "other" if series.other else " / ".join(v.label for v in series.values),
                "installations": point.installations,
                "errors": point.count,
                "rate": f"{point.rate:.2f}",
                "failed": _percent(point.share),
            }
        )
    return rows


def _feature_version_rows(
    adoption: analytics_service_pb2.GetFeatureAdoptionByVersionResponse,
) -> list[dict[str, Any]]:
    return [
        {
            "version": version.version.label,
            "installations": version.installations,
            "features": ", ".join(f"{f.feature.label} {_percent(f.enabled_share)}" for f in version.features),
        }
        for version in adoption.versions
    ]


def content(given: Answers, title: str) -> dict[str, Any]:
    """The template's values, all taken from the dashboard's answers."""
    overview = given.overview
    active = overview.active
    week = Week.from_proto(active.week)
    sections = []
    for heading, distribution in (
        ("Deployment modes", overview.deployment_modes),
        ("App versions", overview.app_versions),
        ("Countries", overview.countries),
        ("Printer types", overview.printer_types),
    ):
        rows = [
            {
                "label": " / ".join(v.label for v in entry.values) if not entry.other else "other",
                "installations": entry.installations,
                "share": _percent(entry.share),
            }
            for entry in distribution.entries
        ]
        sections.append({"title": heading, "rows": rows})
    features = [
        {
            "label": feature.feature.label if not feature.other else "other",
            "installations": feature.enabled_installations,
            "share": _percent(feature.enabled_share),
        }
        for feature in overview.feature_adoption.features
    ]
    sections.append({"title": "Features switched on", "rows": features})
    trend = overview.installation_trend
    return {
        "title": title,
        "week": str(week),
        "active": active.active_last_week,
        "known": active.total_known,
        "new": trend[-1].new_installations if trend else 0,
        "growth": f"{active.week_over_week_growth * 100:+.1f} %",
        "active_4_weeks": active.active_last_4_weeks,
        "trend": [
            {
                "week": str(Week.from_proto(w.week)),
                "active": w.active,
                "known": w.known,
                "new": w.new_installations,
            }
            for w in trend
        ],
        "sections": sections,
        "anomalies": [
            {
                "week": str(Week.from_proto(a.week)),
                "severity": _name(analytics_service_pb2.Severity, a.severity, "SEVERITY_"),
                "kind": _name(analytics_service_pb2.AnomalyKind, a.kind, "ANOMALY_KIND_"),
                "scope": ", ".join(v.label for v in a.scope),
                "observed": f"{a.observed:.4g}",
                "baseline": f"{a.baseline:.4g}",
                "description": a.description,
            }
            for a in overview.anomalies
        ],
        "releases": _release_rows(given.release_health),
        "release_weeks": len(given.release_health.weeks),
        "usage": _usage_rows(given.usage),
        "printer_jobs": _printer_job_rows(given.usage),
        "deployment_errors": _deployment_error_rows(given.deployment_errors),
        "features_by_version": _feature_version_rows(given.features_by_version),
        "min_group_size": overview.min_group_size,
    }


def render(values: dict[str, Any]) -> Report:
    return Report(
        subject=values["title"],
        text=_templates.get_template("report.txt").render(values),
        html=_templates.get_template("report.html").render(values),
    )


async def weekly_report(analytics: Analytics, week: Week) -> Report:
    """The summary of one complete week, with the 12 weeks up to it."""
    given = await answers(analytics, analytics_service_pb2.WeekWindow(until=week.to_proto()))
    return render(content(given, f"Printernizer usage, week {week}"))


def weeks_of_month(year: int, month: int) -> list[Week]:
    """The ISO weeks whose last day (Sunday) is in the month, oldest first."""
    week = Week.containing(dt.datetime(year, month, calendar.monthrange(year, month)[1], 12, tzinfo=dt.UTC))
    first_day = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    weeks = []
    while (sunday := week.end - dt.timedelta(seconds=1)) >= first_day:
        if (sunday.year, sunday.month) == (year, month):
            weeks.append(week)
        week = week.previous()
    return weeks[::-1]


async def monthly_report(analytics: Analytics, year: int, month: int) -> Report:
    """The month's weeks (those ending in it), in the same shape as the weekly summary."""
    weeks = weeks_of_month(year, month)
    window = analytics_service_pb2.WeekWindow(weeks=len(weeks), until=weeks[-1].to_proto())
    given = await answers(analytics, window)
    return render(content(given, f"Printernizer usage, {calendar.month_name[month]} {year}"))


def message(report: Report, config: MailConfig) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = report.subject
    mail["From"] = config.sender
    mail["To"] = ", ".join(config.recipients)
    mail.set_content(report.text)
    mail.add_alternative(report.html, subtype="html")
    return mail


def _send(mail: EmailMessage, config: MailConfig) -> None:
    context = ssl.create_default_context(cafile=config.ca_file)
    smtp: smtplib.SMTP
    if config.security == "ssl":
        smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=context)
    else:
        smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
    with smtp:
        if config.security == "starttls":
            smtp.starttls(context=context)
        if config.username:
            smtp.login(config.username, config.password)
        smtp.send_message(mail)


async def send(report: Report, config: MailConfig) -> None:
    """Send to the configured recipients (smtplib, in a thread)."""
    await asyncio.to_thread(_send, message(report, config), config)


def due(now: dt.datetime) -> list[tuple[int, int]]:
    """The (kind, period) of the reports due now: last week's summary from
    Monday 06:00 UTC, last month's report from the 1st at 06:00 UTC (until
    the next one is due; a period is never sent twice)."""
    reports = []
    if now >= Week.containing(now).start + dt.timedelta(hours=SEND_HOUR):
        reports.append((WEEKLY, last_complete_week(now).key))
    if now.day > 1 or now.hour >= SEND_HOUR:
        previous = (now.replace(day=1) - dt.timedelta(days=1)).date()
        reports.append((MONTHLY, previous.year * 100 + previous.month))
    return reports


class Reporter:
    """Sends each report once, when it is due (a periodic job of the server)."""

    def __init__(self, analytics: Analytics, claims: MailClaimsStore, config: MailConfig) -> None:
        self.analytics = analytics
        self.claims = claims
        self.config = config
        # Every series from zero, so that an alert sees the first failure as an increase.
        for kind in _KIND.values():
            for outcome in ("sent", "failed"):
                EMAILS.add(0, {"kind": kind, "outcome": outcome})

    async def tick(self) -> None:
        for kind, period in due(self.analytics.clock()):
            if await self.claims.claim(kind, period, self.analytics.clock()):
                try:
                    await send(await self.build(kind, period), self.config)
                except Exception as exc:
                    EMAILS.add(1, {"kind": _KIND[kind], "outcome": "failed"})
                    await self.claims.release(kind, period)
                    log.warning(
                        "the %s e-mail report for %d was not sent (%s); will try again",
                        _KIND[kind],
                        period,
                        exc,
                    )
                else:
                    EMAILS.add(1, {"kind": _KIND[kind], "outcome": "sent"})
                    log.info("sent the %s e-mail report for %d", _KIND[kind], period)

    async def build(self, kind: int, period: int) -> Report:
        if kind == WEEKLY:
            return await weekly_report(self.analytics, Week.from_key(period))
        return await monthly_report(self.analytics, period // 100, period % 100)


_KIND = {WEEKLY: "weekly", MONTHLY: "monthly"}
