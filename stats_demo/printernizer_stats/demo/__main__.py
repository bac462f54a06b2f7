"""`python -m printernizer_stats.demo`: the whole usage-statistics system on this machine.

On embedded defaults (SQLite, a self-made TLS CA, every file under one data
directory) it starts, each as the command an operator would run:
- the aggregation server (TLS) and the analytics server (TLS);
- a local stats agent, and an example host app (a Printernizer stand-in) that
  records its simulated printers' work through the SDK into that agent;
- the gateway, with the admin dashboard, the agent's privacy page and the public community page.

Then a simulated fleet of installations reports months of weeks through the
real ingest path (signed, over TLS), with an upgrade wave and an error spike
for the dashboard to show. The demo prints both pages' addresses, shows the
fleet's progress, checks that the dashboard's API shows the fleet's numbers,
and keeps running until Ctrl-C, which stops everything cleanly.

With --short it uses a small fleet and stops after the checks (CI runs this).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from printernizer_stats.agent.delivery import Uplink
from printernizer_stats.aggregation.ingest import MAX_REPORTS_PER_SUBMISSION
from printernizer_stats.analytics.privacy import DEFAULT_MIN_GROUP_SIZE, rounded
from printernizer_stats.common import contract
from printernizer_stats.common.cli import positive_int
from printernizer_stats.common.weeks import last_complete_week

from .fleet import FleetPlan, FleetProgress, build_fleet, report_fleet
from .services import ServiceFailed, free_port, grpc_ready, http_ready, port_is_free, service

# The services' own settings in the caller's environment must not leak into
# the demo, nor a DO_NOT_TRACK meant for real installations into its agent.
FOREIGN_SETTINGS = ("STATS_AGENT_", "AGGREGATION_SERVER_", "ANALYTICS_SERVER_", "STATS_GATEWAY_")


def clean_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(FOREIGN_SETTINGS) and name != "DO_NOT_TRACK"
    }


def get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)  # noqa: S310 - the demo's own loopback gateway
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return json.load(answer)


class Progress:
    """One line that updates in place on a terminal, a line per tenth otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.shown = -1

    def __call__(self, progress: FleetProgress, total: int) -> None:
        done = progress.sent + len(progress.failed)
        line = f"  fleet: {done}/{total} installations reported, {progress.reports} weekly reports"
        if self.tty:
            print(f"\r{line}", end="" if done < total else "\n", flush=True)
        elif done * 10 // total != self.shown or done == total:
            self.shown = done * 10 // total
            print(line, flush=True)


def wait_for_dashboard(gateway: str, token: str, known: int, timeout: float = 120.0) -> dict[str, Any]:
    """The overview, once the analytics server's rollups include the whole fleet."""
    deadline = time.monotonic() + timeout
    overview: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError):
            overview = get_json(f"{gateway}/api/v1/stats/overview", token)
            if int(overview["active"]["totalKnown"]) >= known:
                return overview
        time.sleep(1)
    return overview


def wait_for_local_events(gateway: str, timeout: float = 30.0) -> int:
    """Events the example host app has recorded in the local agent so far."""
    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError):
            stored = int(get_json(f"{gateway}/api/v1/usage-stats/status")["total_events"])
            if stored:
                return stored
        time.sleep(0.5)
    return stored


def weeks_of_history(value: str) -> int:
    """Each simulated installation sends its history in one submission, which holds at most so many weeks."""
    weeks = positive_int(value)
    if weeks > MAX_REPORTS_PER_SUBMISSION:
        raise argparse.ArgumentTypeError(f"at most {MAX_REPORTS_PER_SUBMISSION} weeks, got {weeks}")
    return weeks


def port_number(value: str) -> int:
    port = positive_int(value)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a port (1-65535), got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="printernizer_stats.demo", description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="keep every file here (default: a temporary directory)")
    parser.add_argument(
        "--installations", type=positive_int, help="simulated installations (default 300; short: 40)"
    )
    parser.add_argument(
        "--weeks",
        type=weeks_of_history,
        help=f"weeks of history, 1-{MAX_REPORTS_PER_SUBMISSION} (default 26; short: 10)",
    )
    parser.add_argument("--gateway-port", type=port_number, default=8470, help="the pages' port")
    parser.add_argument("--host-app-port", type=port_number, default=8471, help="the example host app's port")
    parser.add_argument("--short", action="store_true", help="a small fleet; stop after the checks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    installations = args.installations or (40 if args.short else 300)
    weeks = args.weeks or (10 if args.short else 26)

    def stop_on_signal(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Both stop the demo, even where it was started with SIGINT ignored (a shell's background job).
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    print(
        f"Printernizer usage statistics: the whole system (report schema {contract.CURRENT_SCHEMA_VERSION})"
    )
    try:
        return run(args, installations, weeks)
    except ServiceFailed as failure:
        print(f"\nA service did not start: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopped.")
        return 0


def run(args: argparse.Namespace, installations: int, weeks: int) -> int:
    env = clean_environment()
    with contextlib.ExitStack() as stack:
        base = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stats-demo-")))
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o700)
        logs, tls, token_file = base / "logs", base / "tls", base / "admin-token"
        database = f"sqlite:///{base / 'aggregation.db'}"
        socket_path = base / "run" / "agent.sock"
        ingest_port, analytics_port = free_port(), free_port()
        gateway_port = args.gateway_port if port_is_free(args.gateway_port) else free_port()
        host_app_port = args.host_app_port if port_is_free(args.host_app_port) else free_port()
        gateway = f"http://127.0.0.1:{gateway_port}"
        shared = ["--tls-dir", str(tls), "--admin-token-file", str(token_file), "--log-level", "WARNING"]
        print(f"data directory: {base} (logs in {logs})")

        stack.enter_context(
            service(
                "printernizer_stats.aggregation",
                "printernizer_stats.aggregation",
                # The simulated fleet sends from this one address: no per-address limit here.
                [
                    "--listen",
                    f"127.0.0.1:{ingest_port}",
                    "--database-url",
                    database,
                    "--peer-calls-per-second",
                    "0",
                    # The dashboard follows the fleet's reports within seconds.
                    "--rollup-refresh-seconds",
                    "2",
                    *shared,
                ],
                logs,
                grpc_ready(f"localhost:{ingest_port}", tls / "ca.crt"),
                env,
            )
        )
        print(f"  aggregation server  https://localhost:{ingest_port} (TLS, CA {tls / 'ca.crt'})")
        stack.enter_context(
            service(
                "printernizer_stats.analytics",
                "printernizer_stats.analytics",
                [
                    "--listen",
                    f"127.0.0.1:{analytics_port}",
                    "--database-url",
                    database,
                    *shared,
                ],
                logs,
                grpc_ready(f"localhost:{analytics_port}", tls / "ca.crt"),
                env,
            )
        )
        print(f"  analytics server    https://localhost:{analytics_port} (TLS)")
        stack.enter_context(
            service(
                "printernizer_stats.agent",
                "printernizer_stats.agent",
                [
                    "--socket",
                    str(socket_path),
                    "--db",
                    str(base / "agent.db"),
                    "--timezone",
                    "Europe/Berlin",
                    "--server",
                    f"localhost:{ingest_port}",
                    "--ca-file",
                    str(tls / "ca.crt"),
                    "--log-level",
                    "WARNING",
                ],
                logs,
                grpc_ready(f"unix:{socket_path}"),
                env,
            )
        )
        print(f"  stats agent         unix:{socket_path}")
        stack.enter_context(
            service(
                "printernizer_stats.gateway",
                "printernizer_stats.gateway",
                [
                    "--listen",
                    f"127.0.0.1:{gateway_port}",
                    "--analytics",
                    f"localhost:{analytics_port}",
                    "--analytics-ca-file",
                    str(tls / "ca.crt"),
                    "--admin-token-file",
                    str(token_file),
                    "--agent-socket",
                    str(socket_path),
                    "--community-page",
                    # Refreshed often here: the fleet reports after the gateway starts.
                    "--community-refresh-seconds",
                    "15",
                    "--log-level",
                    "WARNING",
                ],
                logs,
                http_ready(f"{gateway}/openapi.json"),
                env,
            )
        )
        print(f"  gateway             {gateway}")
        stack.enter_context(
            service(
                "host_app",
                "printernizer_stats.demo.host_app",
                [
                    "--listen",
                    f"127.0.0.1:{host_app_port}",
                    "--agent-socket",
                    str(socket_path),
                    "--privacy-page",
                    f"{gateway}/privacy",
                    "--simulate-every",
                    "1",
                ],
                logs,
                http_ready(f"http://127.0.0.1:{host_app_port}/"),
                env,
            )
        )
        print(f"  example host app    http://127.0.0.1:{host_app_port}/ (records through the SDK)")

        token = token_file.read_text(encoding="utf-8").strip()
        print(f"\nAdmin dashboard:  {gateway}/dashboard")
        print(f"  admin token:    {token}  (from {token_file})")
        print(f"Privacy page:     {gateway}/privacy  (this installation's agent; sharing is off)")
        print(f"Community page:   {gateway}/community  (public; its figures refresh every 15 s here)")

        plan = FleetPlan(installations, weeks, last_complete_week(dt.datetime.now(dt.UTC)))
        print(f"\nA simulated fleet of {installations} installations reports {weeks} weeks:")
        sent = asyncio.run(_report(plan, ingest_port, tls / "ca.crt"))
        if sent.failed:
            print(f"  {len(sent.failed)} submission(s) refused, e.g. {sent.failed[0]}")

        fleet = build_fleet(plan)
        known = sent.sent
        active = sum(i.first_index <= plan.weeks - 1 <= i.last_index for i in fleet)
        # Every published count is rounded to a multiple of k (docs/privacy.md).
        published_known = rounded(known, DEFAULT_MIN_GROUP_SIZE)
        published_active = rounded(active, DEFAULT_MIN_GROUP_SIZE)
        overview = wait_for_dashboard(gateway, token, published_known)
        shown = overview.get("active", {})
        kinds = [a["kind"].removeprefix("ANOMALY_KIND_").lower() for a in overview.get("anomalies", [])]
        anomalies = [f"{kind.replace('_', ' ')} x{kinds.count(kind)}" for kind in dict.fromkeys(kinds)]
        stored = wait_for_local_events(gateway)
        print(
            f"\nThe dashboard shows {shown.get('totalKnown')} installations known "
            f"(the fleet: {known}), {shown.get('activeLastWeek')} active last week (the fleet: {active}); "
            f"anomalies: {', '.join(anomalies) or 'none'}. Counts are published rounded to a multiple "
            f"of {DEFAULT_MIN_GROUP_SIZE}."
        )
        print(f"The example host app has recorded {stored} events in its local agent.")
        ok = (
            not sent.failed
            and shown.get("totalKnown") == str(published_known)
            and shown.get("activeLastWeek") == str(published_active)
            and stored > 0
        )
        print("Everything worked." if ok else "Something did not work as expected (see the logs).")
        if args.short:
            return 0 if ok else 1
        print("\nPress Ctrl-C to stop.")
        while True:
            time.sleep(3600)


async def _report(plan: FleetPlan, ingest_port: int, ca_file: Path) -> FleetProgress:
    uplink = Uplink(f"localhost:{ingest_port}", str(ca_file))
    try:
        return await report_fleet(plan, uplink, on_progress=Progress())
    finally:
        await uplink.close()


if __name__ == "__main__":
    sys.exit(main())
