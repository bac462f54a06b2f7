"""`python -m printernizer_stats.gateway`: the REST gateway.

Serves the admin statistics API (/api/v1/stats/*, the admin token required)
over the analytics server, with its dashboard at /dashboard; beside a local
agent, that installation's privacy API (/api/v1/usage-stats/*, the SDK's) with
its page (/api/v1/usage-stats/page; /privacy leads there); and, when turned on,
the public community page (/community) with its figures (/api/v1/community),
fetched from the analytics server hourly and served to anyone from that copy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn
from printernizer_stats.common.admin import AdminTokenError, read_token_file
from printernizer_stats.common.cli import (
    EnvArgumentParser,
    host_port,
    positive_int,
    user_data_dir,
    user_runtime_dir,
)
from printernizer_stats.common.telemetry import add_telemetry_options, configure

from .app import create_app
from .community import REFRESH_SECONDS, CommunityFigures
from .stats_api import AnalyticsClient
from .usage_api import local_agent


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="printernizer_stats.gateway",
        env_prefix="STATS_GATEWAY_",
        description=__doc__,
    )
    parser.add_env_option(
        "--listen",
        help="address to serve HTTP on",
        default="127.0.0.1:8470",
        type=host_port,
        metavar="HOST:PORT",
    )
    parser.add_env_option(
        "--analytics",
        help="analytics server address",
        default="127.0.0.1:50444",
        type=host_port,
        metavar="HOST:PORT",
    )
    parser.add_env_option(
        "--agent-socket",
        help="the local agent's Unix socket, for /api/v1/usage-stats (empty: that API is off)",
        default=str(user_runtime_dir() / "agent.sock"),
        metavar="PATH",
    )
    parser.add_env_option(
        "--analytics-ca-file",
        help="CA certificate of the analytics server (default: the self-made CA; empty: the system's CAs)",
        default=str(user_data_dir() / "tls" / "ca.crt"),
        metavar="PATH",
    )
    parser.add_env_option(
        "--admin-token-file",
        help="file holding the admin token that the statistics API needs (the servers' file; "
        "empty: no statistics API or dashboard, e.g. beside one installation)",
        default=str(user_data_dir() / "admin-token"),
        metavar="PATH",
    )
    parser.add_env_switch(
        "--community-page",
        help="serve the public community page (/community) and its figures (/api/v1/community/*) to "
        "anyone, without credentials: the analytics' protected figures, fetched at start and every "
        "--community-refresh-seconds (needs --admin-token-file)",
    )
    parser.add_env_option(
        "--community-refresh-seconds",
        help="how often the community page's figures are fetched again (they change when a week completes)",
        default=int(REFRESH_SECONDS),
        type=positive_int,
        metavar="SECONDS",
    )
    add_telemetry_options(parser)
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    configure("printernizer_stats.gateway", args)
    analytics = None
    try:
        if args.admin_token_file:
            token = read_token_file(Path(args.admin_token_file).expanduser())
            ca = Path(args.analytics_ca_file).expanduser().read_bytes() if args.analytics_ca_file else None
            analytics = AnalyticsClient(args.analytics, ca, token)
    except (OSError, AdminTokenError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    if args.community_page and analytics is None:
        print(
            "gateway: --community-page needs --admin-token-file (the analytics server's figures)",
            file=sys.stderr,
        )
        return 1
    community = (
        CommunityFigures(analytics, refresh_seconds=args.community_refresh_seconds)
        if args.community_page and analytics is not None
        else None
    )
    agent = local_agent(args.agent_socket) if args.agent_socket else None
    if analytics is None and agent is None:
        print("gateway: nothing to serve: set --admin-token-file, --agent-socket or both", file=sys.stderr)
        return 1
    host, _, port = args.listen.rpartition(":")
    app = create_app(analytics, agent, community)
    # uvicorn logs through the configured handler (structured), and writes no
    # access log: each of its lines would hold the client's address.
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        log_level=args.log_level.lower(),
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
