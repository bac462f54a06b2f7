"""The monitoring in deploy/: the Prometheus alert rules (checked and unit-tested with promtool), the
example Prometheus configuration, the Grafana dashboard and its provisioning; and every metric the
rules and the dashboard name is exported by the running services (the aggregation server, the
analytics server and the agent), so no alert or panel waits on a series that never comes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import yaml
from aiosmtpd.controller import Controller
from printernizer.stats.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    aggregated_stats_pb2,
    analytics_service_pb2,
    analytics_service_pb2_grpc,
    ingest_service_pb2_grpc,
)
from printernizer_stats.analytics.email_reports import Reporter
from printernizer_stats.common.clock import SimulatedClock
from printernizer_stats.common.health import is_serving
from printernizer_stats.demo.services import free_port
from printernizer_stats.store import rollup_store
from printernizer_stats.store.mail_claims_store import MailClaimsStore
from sqlalchemy.engine import make_url

from .. import databases
from ..agent_harness import (
    RPC_TIMEOUT,
    FakeClock,
    agent_command,
    agent_environment,
    agent_process,
    short_private_dir,
)
from ..aggregation.conftest import Installation, ServerProcess, report_of, running_server, start_server
from ..analytics.conftest import Inbox, Stored, database_url, last_week, mail, stored
from ..common.conftest import identifier_forms, scrape
from ..conftest import METRICS, ROOT
from ..system_harness import MovableClock
from .conftest import database_away

__all__ = ["database_url", "stored"]  # fixtures used here

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "printernizer-stats.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian's prometheus package; .ci/run installs it)"
)
TIMEOUT = 10
START_TIMEOUT = 60.0


def promtool(*arguments: str | Path, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, arguments)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def rule_expressions(path: Path = RULES) -> dict[str, str]:
    """Each rule's expression, by where it is ("alert NAME" or "record NAME")."""
    return {
        f"alert {rule['alert']}" if "alert" in rule else f"record {rule['record']}": rule["expr"]
        for rule in rules(path)
    }


# Grafana's variables in the dashboard's queries, as Grafana fills them in.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__interval": "30s", "$__range": "24h"}


def dashboard_expressions() -> dict[str, str]:
    """Each panel query's expression, with Grafana's variables filled in, by panel and query."""
    found = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expression = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expression = expression.replace(variable, value)
            found[f"panel {panel['title']!r} query {target['refId']}"] = expression
    return found


# --- metric names in PromQL -----------------------------------------------------------------------------

# PromQL's words that read like metric names: operators, modifiers, and the aggregations (which may take
# their grouping before the parenthesis, `sum by (job) (x)`, so are not always followed by one).
PROMQL_WORDS = frozenset(
    {
        *("and", "or", "unless", "atan2", "by", "without", "on", "ignoring", "group_left", "group_right"),
        *("bool", "offset", "start", "end", "inf", "nan"),
        *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"),
        *("bottomk", "topk", "quantile", "limitk", "limit_ratio"),
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r"__name__\s*=\s*[\"'`]([a-zA-Z_:][\w:]*)[\"'`]")
_MATCHERS = re.compile(r"\{[^{}]*\}")  # label names and values
_RANGES = re.compile(r"\[[^\[\]]*\]")  # durations and subquery steps
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])[a-zA-Z_:][\w:]*")
_CALL = re.compile(r"\s*\(")


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects: every identifier left once strings, label
    matchers, ranges and label lists are taken out, except functions (called) and PromQL's words."""
    names = set(_NAME_MATCHER.findall(expression))
    text = _STRING.sub(" ", expression)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(r"\1 ", text)
    for found in _IDENTIFIER.finditer(text):
        if found[0] not in PROMQL_WORDS and not _CALL.match(text, found.end()):
            names.add(found[0])
    return names


# The series Prometheus writes itself for every target it scrapes.
PROMETHEUS_OWN = frozenset({"up"})


def unexported(expressions: dict[str, str], exported: frozenset[str]) -> dict[str, str]:
    """The metric names that the expressions select and nobody exports, each with where it is named.
    Exported names are sample names: with the suffix of their type (_total, _bucket, _count, _sum)."""
    recorded = {where.removeprefix("record ") for where in expressions if where.startswith("record ")}
    missing = {}
    for where, expression in expressions.items():
        for name in sorted(metric_names(expression) - exported - PROMETHEUS_OWN - recorded):
            missing.setdefault(name, where)
    return missing


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names(
        'sum by (reason) (rate(a_total{reason!~"x|y", job="z"}[5m])) / on () group_left '
        'sum(rate(b_count[1h] offset 5m)) > 0.1 and c unless on (kind) d_bucket{le="+Inf"}'
    ) == {"a_total", "b_count", "c", "d_bucket"}
    assert metric_names("histogram_quantile(0.95, sum by (le, method) (rate(h_bucket[2m])))") == {"h_bucket"}
    assert metric_names('absent(up{job="printernizer-stats-aggregation"} == 1)') == {"up"}
    assert metric_names('count_values("version", build_info) + {__name__="by_matcher"}') == {
        "build_info",
        "by_matcher",
    }
    assert metric_names("topk(3, x) + 1e3 * y:recorded:rate5m - 0x1F") == {"x", "y:recorded:rate5m"}
    assert metric_names("sum without (instance) (max_over_time(z[1h:5m]))") == {"z"}
    assert metric_names("vector(1)") == set()


# --- the alert rules ------------------------------------------------------------------------------------


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 10
    assert len({rule["alert"] for rule in alerts}) == len(alerts)
    for rule in alerts:
        assert re.fullmatch(r"\d+[smhd]", str(rule.get("for", ""))), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 100, rule["alert"]  # what it means, what to do


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fired, quiet = set(), set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - fired == set()
    assert alerts - quiet == set()


def test_every_alert_is_documented() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules():
        assert f"`{rule['alert']}`" in operations, rule["alert"]


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


@needs_promtool
def test_promtool_fails_a_rule_that_does_not_do_what_its_test_says(tmp_path: Path) -> None:
    """The unit tests can fail: the database alert waiting 10 minutes instead of 1 misses its test."""
    text = RULES.read_text()
    slow = text.replace(
        "expr: stats_database_up == 0\n        for: 1m", "expr: stats_database_up == 0\n        for: 10m"
    )
    assert slow != text
    (tmp_path / "alerts.yml").write_text(slow)
    shutil.copy(RULE_TESTS, tmp_path / "alerts.test.yml")
    tested = promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "StatsDatabaseUnreachable" in tested.stdout + tested.stderr


@needs_promtool
def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    broken = RULES.read_text().replace(
        "min(stats_rollups_lag_seconds) > 900", "min(stats_rollups_lag_seconds > 900"
    )
    (tmp_path / "alerts.yml").write_text(broken)
    assert promtool("check", "rules", tmp_path / "alerts.yml").returncode != 0


@needs_promtool
def test_the_example_prometheus_configuration_is_valid_and_names_the_jobs_the_rules_expect() -> None:
    checked = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    configuration = load_yaml(PROMETHEUS / "prometheus.yml")
    assert configuration["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in configuration["scrape_configs"]}
    selectors = re.findall(r'job\s*(=~|=)\s*"([^"]+)"', RULES.read_text())
    assert selectors
    for operator, value in selectors:
        if operator == "=":
            assert value in jobs, value
        else:
            assert {job for job in jobs if re.fullmatch(value, job)} == jobs, value


# --- the dashboard --------------------------------------------------------------------------------------


@needs_promtool
def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool checks each query as the expression of a recording rule."""
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    recorded = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(expressions.values())]
    (tmp_path / "dashboard.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]})
    )
    checked = promtool("check", "rules", tmp_path / "dashboard.rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_can_be_provisioned() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "printernizer-stats"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        where = panel["gridPos"]
        assert where["x"] + where["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(where["x"], where["x"] + where["w"])
            for y in range(where["y"], where["y"] + where["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        # The data source is the one chosen on the dashboard, whatever its name is in this Grafana.
        for source in (panel["datasource"], *(t["datasource"] for t in panel["targets"])):
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "printernizer-stats.yaml")
    assert provider["apiVersion"] == 1
    assert [p["type"] for p in provider["providers"]] == ["file"]
    source = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    assert [s["type"] for s in source["datasources"]] == ["prometheus"]


# --- every metric named is exported ---------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclasses.dataclass(frozen=True)
class Scraped:
    samples: dict[str, Samples]  # each service's, by sample name and labels (scrape() of the telemetry tests)
    installation_id: bytes  # the one that reported, then was deleted

    @property
    def names(self) -> frozenset[str]:
        """Every sample name the services export."""
        return frozenset(name for samples in self.samples.values() for name, _ in samples)


def wait_for(ready: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def serving(server: ServerProcess) -> bool:
    return "serving over TLS on port" in server.log()


def call_the_aggregation_server(port: int, ca: bytes, installation: Installation) -> None:
    """A report accepted, an installation deleted, calls refused: unsigned, and by the rate limit."""
    with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca)) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        stub.SubmitReports(installation.submission(report_of(installation, last_week())), timeout=TIMEOUT)
        stub.DeleteInstallation(installation.deletion(dt.datetime.now(dt.UTC)), timeout=TIMEOUT)
        other = Installation(uuid.uuid4().bytes)
        unsigned = other.submission(report_of(other, last_week()))
        unsigned.reports[0].signature = bytes(64)
        codes = []
        for _ in range(8):  # the burst of --peer-calls-per-second 1 is 4 calls
            with pytest.raises(grpc.RpcError) as refused:
                stub.SubmitReports(unsigned, timeout=TIMEOUT)
            codes.append(refused.value.code())
            if codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
        assert codes[0] == grpc.StatusCode.UNAUTHENTICATED
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes


def query_the_analytics_server(port: int, ca: bytes, token: str) -> None:
    with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca)) as channel:
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        stub.GetOverview(
            analytics_service_pb2.GetOverviewRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=TIMEOUT,
        )


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """The aggregation server, the analytics server (e-mail on, to an SMTP port nobody listens on)
    and an agent, each serving metrics, after calls of every kind the metrics count."""
    base = tmp_path_factory.mktemp("monitoring")
    database = f"sqlite:///{base / 'stats.db'}"
    ports = {"aggregation": free_port(), "analytics": free_port(), "agent": free_port()}
    processes: list[subprocess.Popen[bytes]] = []
    agent_base = short_private_dir()  # a socket path must be short
    try:
        aggregation = start_server(
            base,
            database,
            "aggregation",
            extra=(
                *("--metrics-listen", f"127.0.0.1:{ports['aggregation']}"),
                *("--peer-calls-per-second", "1", "--rollup-refresh-seconds", "1"),
            ),
        )
        processes.append(aggregation.process)
        wait_for(lambda: serving(aggregation), aggregation.process, aggregation.log_path)
        analytics_port = free_port()
        analytics_command = [
            *(sys.executable, "-m", "printernizer_stats.analytics", "--database-url", database),
            *(
                "--listen",
                f"127.0.0.1:{analytics_port}",
                "--metrics-listen",
                f"127.0.0.1:{ports['analytics']}",
            ),
            *("--tls-dir", str(base / "tls"), "--admin-token-file", str(base / "admin-token")),
            *("--smtp-host", "127.0.0.1", "--smtp-port", str(free_port()), "--smtp-security", "none"),
            *("--mail-from", "stats@printernizer.invalid", "--mail-to", "team@printernizer.invalid"),
        ]
        log_path = base / "analytics.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                analytics_command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        analytics = ServerProcess(process, analytics_port, log_path)
        processes.append(analytics.process)
        with (agent_base / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                agent_command(
                    agent_base / "agent.sock",
                    agent_base / "agent.db",
                    *("--metrics-listen", f"127.0.0.1:{ports['agent']}"),
                ),
                cwd=ROOT,
                env=agent_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        processes.append(agent)
        wait_for(lambda: serving(analytics), analytics.process, analytics.log_path)
        wait_for(lambda: is_serving(f"unix:{agent_base / 'agent.sock'}"), agent, agent_base / "agent.log")

        ca = (base / "tls" / "ca.crt").read_bytes()
        installation = Installation(uuid.uuid4().bytes)
        call_the_aggregation_server(aggregation.port, ca, installation)
        query_the_analytics_server(analytics.port, ca, (base / "admin-token").read_text().strip())
        samples = {service: scrape(port) for service, port in ports.items()}
        yield Scraped(samples, installation.installation_id)
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(agent_base, ignore_errors=True)


@pytest.mark.processes
def test_every_metric_the_rules_and_the_dashboard_name_is_exported(scraped: Scraped) -> None:
    named = {**rule_expressions(), **dashboard_expressions()}
    assert unexported(named, scraped.names) == {}
    # Each service's own metrics are among them (so the check above looked at all three).
    selected = set().union(*(metric_names(e) for e in named.values()))
    for part in ("ingest", "rollups", "database", "query", "email", "agent"):
        assert any(name.startswith(f"stats_{part}_") for name in selected), part


@pytest.mark.processes
def test_a_rule_naming_a_metric_nobody_exports_is_caught(scraped: Scraped, tmp_path: Path) -> None:
    misspelled = tmp_path / "alerts.yml"
    misspelled.write_text(RULES.read_text().replace("stats_rollups_lag_seconds", "stats_rollup_lag_seconds"))
    assert unexported(rule_expressions(misspelled), scraped.names) == {
        "stats_rollup_lag_seconds": "alert StatsRollupsBehind"
    }
    # A counter named without its _total is not what Prometheus stores either.
    assert unexported({"panel": "rate(stats_ingest_reports[5m])"}, scraped.names) == {
        "stats_ingest_reports": "panel"
    }


@pytest.mark.processes
def test_the_services_metrics_carry_no_identifying_label(scraped: Scraped) -> None:
    """The services' own metrics are labelled by outcomes, reasons and kinds only (besides
    OpenTelemetry's scope); no label holds the installation that reported, nor (scrape() checks) an
    address."""
    allowed = {"outcome", "reason", "method", "scope", "query", "kind", "le"}
    forms = identifier_forms(scraped.installation_id)
    for service, samples in scraped.samples.items():
        for name, labels in samples:
            if name.startswith("stats_"):
                assert {key for key, _ in labels} <= allowed, (service, name, labels)
            for _, value in labels:
                assert not any(form in value for form in forms), (service, name, labels)


# --- what the alerts' own metrics measure ---------------------------------------------------------------


def collected(name: str) -> dict[tuple[tuple[str, Any], ...], float]:
    """The values of the metric `name` made in this process (conftest's reader), by attributes."""
    values: dict[tuple[tuple[str, Any], ...], float] = {}
    data = METRICS.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        values[tuple(sorted((point.attributes or {}).items()))] = point.value
    return values


def gauge(name: str) -> float:
    (value,) = collected(name).values()
    return value


async def until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def rollups_taken_by_another_replica(url: str) -> Iterator[None]:
    """The rollups' advisory lock held, as by a replica refreshing them."""
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (rollup_store._LOCK_KEY,))
        yield


@pytest.mark.postgres
async def test_the_database_and_rollup_gauges_follow_the_database(tmp_path: Path) -> None:
    """stats.database.up follows readiness; stats.rollups.lag grows while no refresh completes
    (the database away, or another replica holding the turn without finishing) and drops once
    one does."""
    clock = MovableClock()
    hour = dt.timedelta(hours=1)
    with databases.fresh_postgres_database() as url:
        settings = {"readiness_seconds": 0.1, "rollup_refresh_seconds": 0.1}
        async with running_server(url, tmp_path, clock=clock, **settings):

            def current() -> bool:
                return gauge("stats.database.up") == 1 and gauge("stats.rollups.lag") < 60

            await until(current, "the rollups caught up at start")
            with database_away(url):
                clock.offset += hour
                await until(lambda: gauge("stats.database.up") == 0, "the database is seen away")
                assert gauge("stats.rollups.lag") >= hour.total_seconds()
            await until(current, "the database answers again and the rollups catch up")
            with rollups_taken_by_another_replica(url):
                clock.offset += hour
                await asyncio.sleep(1)  # ten turns, each skipped
                assert gauge("stats.rollups.lag") >= hour.total_seconds()
                assert gauge("stats.database.up") == 1
            await until(current, "the turn is free again and the rollups catch up")


async def test_email_reports_are_counted_sent_or_failed(stored: Stored) -> None:
    def counts() -> dict[tuple[str, str], float]:
        return {(dict(k)["kind"], dict(k)["outcome"]): v for k, v in collected("stats.email.reports").items()}

    stored.analytics.clock = FakeClock(dt.datetime(2026, 11, 23, 7, tzinfo=dt.UTC))  # a Monday: both due
    claims = MailClaimsStore(stored.analytics.store.engine)
    broken = Reporter(stored.analytics, claims, mail(free_port()))  # nothing listens
    before = counts()
    assert set(before) == {
        (kind, outcome) for kind in ("weekly", "monthly") for outcome in ("sent", "failed")
    }
    await broken.tick()
    await broken.tick()
    failed = counts()
    assert {key: failed[key] - before[key] for key in before} == {
        ("weekly", "failed"): 2,
        ("monthly", "failed"): 2,
        ("weekly", "sent"): 0,
        ("monthly", "sent"): 0,
    }
    controller = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        await Reporter(stored.analytics, claims, mail(controller.port)).tick()
    finally:
        controller.stop()
    sent = counts()
    assert {key: sent[key] - failed[key] for key in before} == {
        ("weekly", "failed"): 0,
        ("monthly", "failed"): 0,
        ("weekly", "sent"): 1,
        ("monthly", "sent"): 1,
    }


@pytest.mark.processes
async def test_an_agent_that_cannot_deliver_says_so(tmp_path: Path) -> None:
    """What StatsAgentDeliveryFailing reads: a report due, the server unreachable."""
    clock_file, metrics_port = tmp_path / "clock.json", free_port()
    options = ("--simulated-clock", str(clock_file), "--server", f"localhost:{free_port()}")  # nobody there
    async with (
        agent_process(
            short_private_dir(), *options, "--metrics-listen", f"127.0.0.1:{metrics_port}", STATS_TESTING="1"
        ) as agent,
        grpc.aio.insecure_channel(agent.target) as channel,
    ):
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        sharing = agent_service_pb2.SetConsentRequest(
            state=agent_service_pb2.CONSENT_STATE_SHARING,
            schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
        )
        await stub.SetConsent(sharing, timeout=RPC_TIMEOUT)
        samples = await asyncio.to_thread(scrape, metrics_port)
        assert samples[("stats_agent_delivery_failing", ())] == 0
        assert samples[("stats_agent_storage_failing", ())] == 0
        SimulatedClock.write(clock_file, advance=8 * 24 * 3600)  # the week ends: its report is due
        deadline = time.monotonic() + 30
        while samples[("stats_agent_delivery_failing", ())] != 1:
            assert time.monotonic() < deadline, agent.log()
            await asyncio.sleep(0.2)
            samples = await asyncio.to_thread(scrape, metrics_port)
        status = await stub.GetStatus(agent_service_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT)
        await agent.stop()
    assert status.last_outcome == agent_service_pb2.DELIVERY_OUTCOME_RETRYING
    assert samples[("stats_agent_outbox_reports", ())] == status.queued_reports >= 1
    assert samples[("stats_agent_reports_dropped_total", ())] == 0
