"""A generated run over every endpoint of the gateway's two APIs.

schemathesis reads the gateway's own OpenAPI schema (/openapi.json, as
create_app corrects it) and generates requests from it, valid ones and invalid
ones, against the real gateway on uvicorn: in front of the real analytics
server over TLS (statistics API), and of a real agent on its Unix socket
(privacy API: the SDK's router, mounted by the gateway). One test per API.
For every generated request:
- no answer is a 5xx: with both backends up, nothing a client sends may make
  the gateway or a backend fail (a backend's INTERNAL would show as 502);
- no answer carries a traceback;
- every 4xx has the JSON error body, and every 400 names its field (in
  `field` from the statistics API; at the start of the message from the
  privacy API, whose errors are the SDK router's HTTPExceptions);
- every answer conforms to the schema (documented status, content type and
  body), and an invalid request is refused;
- the guard of each API holds for that same request: without the admin token
  it is 401, and addressed to another host name it is 403.

Generated weeks seldom fall on the calendar's edges, so a last test sends
those to the backends on purpose. (tests/gateway/test_inputs.py searches each
class of wrong input precisely; this file checks what holds for all of them.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from printernizer_stats.common.weeks import Week
from printernizer_stats.gateway.params import MAX_WEEKS
from printernizer_stats.gateway.stats_api import AnalyticsClient
from printernizer_stats.gateway.usage_api import local_agent
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from ..agent_harness import RunningAgent, agent, agent_dir
from ..aggregation.conftest import ADMIN_TOKEN, TIMEOUT, Installation, report_of, running_server
from ..analytics.conftest import last_week, refresh_rollups, running_analytics
from .conftest import running_gateway

__all__ = ["agent", "agent_dir"]  # fixtures used here
# schemathesis's own strategies use `random`; Hypothesis warns about it on every run.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Per operation and per mode (valid, invalid): about 1,000 requests in all, in
# well under a minute. Derandomized, so a run is repeatable.
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "Exception in ASGI")


def is_error_body(answer: requests.Response) -> bool:
    try:
        body = answer.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and isinstance(body.get("code"), str)
        and isinstance(body.get("field", ""), str)
        and (
            answer.status_code != 400
            or bool(body.get("field"))
            or not str(answer.request.path_url).startswith("/api/v1/stats/")
        )
    )


def check_answer(case: Case, answer: requests.Response) -> None:
    """What the gateway promises for any request, beyond the schema."""
    where = f"{case.as_curl_command()}\n-> {answer.status_code} {answer.text[:500]}"
    assert answer.status_code < 500, where
    assert not any(marker in answer.text for marker in TRACEBACK_MARKERS), where
    if answer.status_code >= 400:
        assert is_error_body(answer), where
    # A body is a contract: one made invalid is refused, even when its only
    # fault is a key the schema does not have (which negative_data_rejection forgives).
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY):
        assert 400 <= answer.status_code < 500, where


# A second request for each generated one: the same, without the API's credential.
Guard = Callable[[Case, str, requests.Session], None]


def needs_the_token(case: Case, url: str, session: requests.Session) -> None:
    answer = case.call(base_url=url, session=session, headers={"Authorization": ""}, timeout=TIMEOUT)
    assert answer.status_code == 401, (case.as_curl_command(), answer.text)
    assert is_error_body(answer), answer.text


def needs_a_loopback_host(case: Case, url: str, session: requests.Session) -> None:
    answer = case.call(base_url=url, session=session, headers={"Host": "evil.example"}, timeout=TIMEOUT)
    assert answer.status_code == 403, (case.as_curl_command(), answer.text)
    assert is_error_body(answer), answer.text


@dataclass
class Run:
    """One generated run against the gateway at `url`."""

    url: str
    headers: dict[str, str]
    guard: Guard
    session: requests.Session = field(default_factory=requests.Session)
    sent: int = 0
    driven: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)

    def drive(self, operation: APIOperation, mode: GenerationMode) -> None:
        """EXAMPLES generated requests to one operation; a failure is kept
        (shrunk to a small example) and the run goes on."""
        checks = CHECKS + ([ignored_auth] if operation.security else [])

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def send(case: Case) -> None:
            self.sent += 1
            # When the headers are what was made invalid (the token left out),
            # adding the token would make the request valid again.
            negative_headers = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
            headers = {} if negative_headers else self.headers
            answer = case.call(base_url=self.url, session=self.session, headers=headers, timeout=TIMEOUT)
            check_answer(case, answer)
            case.validate_response(answer, checks=checks, headers=headers)
            self.guard(case, self.url, self.session)

        try:
            send()
        except hypothesis.errors.Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing to get wrong: no parameters, no body
        except Exception as exc:
            self.failures.append(f"{operation.label} ({mode.value}):\n{exc}")
        self.driven.add(operation.label)


def generated_run(url: str, prefix: str, headers: dict[str, str], guard: Guard) -> Run:
    """Every operation under `prefix`, with valid and then invalid requests.
    Synchronous (schemathesis sends with requests): run it in a thread."""
    run = Run(url, headers, guard)
    for result in schemathesis.openapi.from_url(f"{url}/openapi.json").get_all_operations():
        operation = result.ok()
        if operation.path.startswith(prefix):
            for mode in GenerationMode:
                run.drive(operation, mode)
    return run


@asynccontextmanager
async def statistics_gateway(tmp_path: Path) -> AsyncIterator[str]:
    """The gateway over the real analytics server (SQLite is enough here: the
    gateway is under test, and the analytics tests cover both databases)."""
    async with running_server(f"sqlite:///{tmp_path / 'aggregation.db'}", tmp_path) as server:
        for _ in range(3):
            installation = Installation(uuid.uuid4().bytes)
            submission = installation.submission(report_of(installation, last_week()))
            await server.stub.SubmitReports(submission, timeout=TIMEOUT)
        await refresh_rollups(server.database_url)
        async with running_analytics(server.database_url, tmp_path / "tls", min_group_size=2) as (port, ca):
            http, task, url = await running_gateway(AnalyticsClient(f"localhost:{port}", ca, ADMIN_TOKEN))
            try:
                yield url
            finally:
                http.should_exit = True
                await asyncio.wait_for(task, 30)


def assert_clean(run: Run, operations: int) -> None:
    assert not run.failures, "\n\n".join(run.failures)
    assert len(run.driven) == operations, sorted(run.driven)


@pytest.mark.slow
async def test_a_generated_run_over_the_statistics_api(tmp_path: Path) -> None:
    async with statistics_gateway(tmp_path) as url:
        run = await asyncio.to_thread(generated_run, url, "/api/v1/stats/", ADMIN, needs_the_token)
    assert_clean(run, operations=13)


@pytest.mark.slow
async def test_a_generated_run_over_the_privacy_api(agent: RunningAgent) -> None:
    http, task, url = await running_gateway(None, local_agent(str(agent.socket_path)))
    try:
        # The prefix itself too: DELETE /api/v1/usage-stats deletes everything.
        run = await asyncio.to_thread(generated_run, url, "/api/v1/usage-stats", {}, needs_a_loopback_host)
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
    assert_clean(run, operations=10)


def calendar_edges() -> list[Week]:
    """Real weeks at the edges: of the years the system knows, of a 53-week
    year, and around now (complete, current, future)."""
    now = Week.containing(dt.datetime.now(dt.UTC))
    ends = [Week(1900, 1), Week(1900, 2), Week(1901, 1), Week(1970, 1), Week(2026, 53)]
    return [*ends, now.previous().previous(), now.previous(), now, now.next(), Week(9000, 1), Week(9000, 52)]


WINDOWED = ["overview", "installations", "version-migration", "feature-trends", "errors", "error-rates"]
WINDOWED += ["anomalies", "export"]
ONE_WEEK = ["distribution/country", "distribution/app-version?and=country", "features"]


@pytest.mark.slow
async def test_the_calendar_edges_reach_the_backends_and_come_back_as_answers(
    agent: RunningAgent, tmp_path: Path
) -> None:
    """Each real week at an edge, alone and in the smallest and largest window,
    on every endpoint that takes a week: an answer, or a 400 naming what was
    sent. Never a 5xx: a backend failing on a date would be 502."""
    answers: list[tuple[str, dict[str, Any], httpx.Response]] = []
    async with statistics_gateway(tmp_path) as url, httpx.AsyncClient(base_url=url, headers=ADMIN) as client:
        for week in calendar_edges():
            for path in WINDOWED:
                for weeks in (None, 1, MAX_WEEKS):
                    params = {"until": str(week)} | ({"weeks": weeks} if weeks else {})
                    answers.append((path, params, await client.get(f"/api/v1/stats/{path}", params=params)))
            for path in ONE_WEEK:
                params = {"week": str(week)}
                answers.append((path, params, await client.get(f"/api/v1/stats/{path}", params=params)))
    http, task, url = await running_gateway(None, local_agent(str(agent.socket_path)))
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for week in calendar_edges():
                params = {"week": str(week)}
                answers.append(
                    ("preview", params, await client.get("/api/v1/usage-stats/preview", params=params))
                )
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
    for path, params, answer in answers:
        assert answer.status_code in (200, 400), (path, params, answer.text)
        if answer.status_code == 400:
            error = answer.json()
            named = error.get("field") or re.match(r"\w+", error["error"])[0]  # type: ignore[index]
            assert named in params, (path, params, answer.text)
    assert {answer.status_code for *_, answer in answers} == {200, 400}
