"""E-mail reports against a real SMTP server started in this process
(aiosmtpd): the message arrives, its figures are the dashboard's, its HTML is
escaped, STARTTLS verifies the server, and a failed send is logged and tried
again without crashing anything."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import subprocess
import sys
import uuid
from email.message import Message
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from printernizer.stats.v1 import analytics_service_pb2, country_pb2
from printernizer_stats.analytics.email_reports import (
    MONTHLY,
    WEEKLY,
    Reporter,
    due,
    send,
    weekly_report,
    weeks_of_month,
)
from printernizer_stats.common.tls import ensure_self_made
from printernizer_stats.common.weeks import Week
from printernizer_stats.demo.services import free_port
from printernizer_stats.store import schema
from printernizer_stats.store.mail_claims_store import MailClaimsStore
from sqlalchemy import func, select

from ..agent_harness import FakeClock
from ..aggregation.conftest import Installation, report_of
from ..conftest import ROOT
from .conftest import W46, Inbox, Stored, mail


def parts(message: Message) -> tuple[str, str]:
    text = html = ""
    for part in message.walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            if part.get_content_type() == "text/plain":
                text = payload.decode()
            elif part.get_content_type() == "text/html":
                html = payload.decode()
    return text, html


async def test_the_weekly_summary_arrives_with_the_dashboards_figures(
    stored: Stored, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    await send(await weekly_report(stored.analytics, W46), mail(port))
    (message,) = inbox.messages
    assert message["Subject"] == "Printernizer usage, week 2026-W46"
    assert message["To"] == "maintainers@printernizer.invalid"
    text, html = parts(message)
    overview = await stored.analytics.overview(
        analytics_service_pb2.GetOverviewRequest(
            window=analytics_service_pb2.WeekWindow(until=W46.to_proto())
        )
    )
    assert f"{overview.active.active_last_week} active installations" in text
    # Exact: 11 active (9 the week before), 12 known, 2 new; published rounded to multiples of 3.
    assert "Week 2026-W46: 12 active installations (+33.3 % on the week before), 12 known, 3 new." in text
    for distribution in (overview.deployment_modes, overview.app_versions, overview.countries):
        for entry in distribution.entries:
            label = "other" if entry.other else " / ".join(v.label for v in entry.values)
            line = f"  {label}: {entry.installations} ({entry.share * 100:.1f} %)"
            assert line in text
            assert f'<td>{label}</td><td align="right">{entry.installations}</td>' in html
    assert "Raspberry Pi" not in text  # folded into "other" (k = 3) on the dashboard, so here too
    # The views by deployment mode and version, as the dashboard has them for the week.
    window = analytics_service_pb2.WeekWindow(until=W46.to_proto())
    rates = await stored.analytics.error_rates(
        analytics_service_pb2.GetErrorRatesRequest(window=window, by_deployment_mode=True)
    )
    shown = [s for s in rates.series if not s.points[-1].suppressed]
    assert shown
    for series in shown:
        label = "other" if series.other else " / ".join(v.label for v in series.values)
        point = series.points[-1]
        assert (
            f"  {label}: {point.installations} installations, {point.rate:.2f} errors per installation"
            in text
        )
    # Jobs by printer type: each installation completed 2 jobs on a Prusa and 1 on a Bambu Lab and
    # failed 2 on the Prusa; 11 active in W46, counts rounded to multiples of 3.
    assert "  Prusa: 21 jobs completed on 12 installations, 21 failed (50.0 % of its jobs)" in text
    assert "  Bambu Lab: 12 jobs completed on 12 installations, none shown failed" in text
    assert '<td>Prusa</td><td align="right">12</td><td align="right">21</td><td align="right">21</td>' in html
    adoption = await stored.analytics.feature_adoption_by_version(
        analytics_service_pb2.GetFeatureAdoptionByVersionRequest(week=W46.to_proto())
    )
    assert adoption.versions
    for version in adoption.versions:
        assert f"  {version.version.label} ({version.installations} installations): " in text


async def test_html_is_escaped(stored: Stored, smtp: tuple[Inbox, int]) -> None:
    # Three installations in Bosnia & Herzegovina (k = 3): the country's name has an ampersand.
    for _ in range(3):
        agent = Installation(uuid.uuid4().bytes)
        report = report_of(agent, W46)
        report.installation.country = country_pb2.COUNTRY_BA
        await stored.ingest.submit(agent.submission(report))
    await stored.rollups.refresh()
    inbox, port = smtp
    await send(await weekly_report(stored.analytics, W46), mail(port))
    text, html = parts(inbox.messages[0])
    assert "Bosnia & Herzegovina: 3" in text
    assert "<td>Bosnia &amp; Herzegovina</td>" in html
    assert "Bosnia & Herzegovina" not in html


async def test_a_failed_send_is_logged_and_tried_again_once_per_period(
    stored: Stored, smtp: tuple[Inbox, int], caplog: pytest.LogCaptureFixture
) -> None:
    inbox, port = smtp
    monday_morning = FakeClock(dt.datetime(2026, 11, 23, 7, tzinfo=dt.UTC))  # W48, a Monday
    stored.analytics.clock = monday_morning
    claims = MailClaimsStore(stored.analytics.store.engine)
    broken = Reporter(stored.analytics, claims, mail(free_port()))  # nothing listens
    await broken.tick()  # must not raise
    assert "e-mail report for 202647 was not sent" in caplog.text
    assert await sent_reports(stored) == 0  # the claim was released
    working = Reporter(stored.analytics, claims, mail(port))
    await working.tick()
    await working.tick()  # already sent: not again
    assert sorted(m["Subject"] for m in inbox.messages) == [
        "Printernizer usage, October 2026",
        "Printernizer usage, week 2026-W47",
    ]
    assert await sent_reports(stored) == 2


async def sent_reports(stored: Stored) -> int:
    async with stored.analytics.store.engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(schema.email_reports)) or 0)


async def test_starttls_verifies_the_server(stored: Stored, tmp_path: Path) -> None:
    tls = ensure_self_made(tmp_path / "tls")
    assert tls.ca_certificate is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.certificate, tls.private_key)
    inbox = Inbox()
    controller = Controller(
        inbox, hostname="localhost", port=free_port(), tls_context=context, require_starttls=True
    )
    controller.start()
    try:
        report = await weekly_report(stored.analytics, W46)
        await send(
            report,
            mail(controller.port, host="localhost", security="starttls", ca_file=str(tls.ca_certificate)),
        )
        assert len(inbox.messages) == 1
        with pytest.raises(ssl.SSLError):  # a server the configured CA did not sign
            await send(report, mail(controller.port, host="localhost", security="starttls"))
    finally:
        controller.stop()


def test_the_schedule() -> None:
    assert due(dt.datetime(2026, 11, 23, 5, 59, tzinfo=dt.UTC)) == [(MONTHLY, 202610)]
    assert due(dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.UTC)) == [(WEEKLY, 202647), (MONTHLY, 202610)]
    assert due(dt.datetime(2026, 12, 1, 5, tzinfo=dt.UTC)) == [(WEEKLY, 202648)]  # November's: at 06:00
    assert due(dt.datetime(2026, 12, 1, 6, tzinfo=dt.UTC)) == [(WEEKLY, 202648), (MONTHLY, 202611)]
    # November 2026: the weeks whose Sunday falls in it (Sunday 1 November to Sunday 29 November).
    assert weeks_of_month(2026, 11) == [Week(2026, n) for n in range(44, 49)]


def run_send_test(tmp_path: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "printernizer_stats.analytics", "--send-test-email",
            "--database-url", f"sqlite:///{tmp_path / 'aggregation.db'}",
            "--tls-dir", str(tmp_path / "tls"), "--admin-token-file", str(tmp_path / "admin-token"),
            "--smtp-host", "127.0.0.1", "--smtp-port", str(port), "--smtp-security", "none",
            "--mail-from", "stats@printernizer.invalid",
            "--mail-to", "a@printernizer.invalid, b@printernizer.invalid",
        ],
        cwd=ROOT, env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.processes
def test_the_send_test_command(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    sent = run_send_test(tmp_path, port)
    assert sent.returncode == 0, sent.stderr
    (message,) = inbox.messages
    assert message["To"] == "a@printernizer.invalid, b@printernizer.invalid"
    failed = run_send_test(tmp_path, free_port())  # nothing listens
    assert failed.returncode == 1
    assert "the test e-mail was not sent" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_the_smtp_password_is_never_shown() -> None:
    config = mail(25, username="operator", password="s3cret")
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config)
