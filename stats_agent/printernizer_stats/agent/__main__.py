"""`python -m printernizer_stats.agent`: the local statistics agent beside Printernizer.

Serves the agent API on a Unix socket and keeps events in SQLite. Statistics
are off by default: nothing is sent unless the user opts in, and DO_NOT_TRACK=1
(or --disable) turns recording off entirely.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from printernizer_stats.common.cli import (
    EnvArgumentParser,
    env_flag,
    positive_int,
    user_data_dir,
    user_runtime_dir,
)
from printernizer_stats.common.clock import TestingNotAllowed, clock_from, require_testing
from printernizer_stats.common.countries import system_timezone
from printernizer_stats.common.telemetry import add_telemetry_options, configure

from .agent import AgentConfig
from .consent import Override
from .server import AgentServerConfig, SocketError, serve
from .storage import StorageError

# A failpoint for tests of the real process (needs STATS_TESTING=1): the agent
# kills itself with SIGKILL right after committing this many batches.
KILL_AFTER_COMMITS = "STATS_AGENT_KILL_AFTER_COMMITS"


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="printernizer_stats.agent", env_prefix="STATS_AGENT_", description=__doc__
    )
    parser.add_env_option(
        "--socket",
        help="Unix socket to serve the agent API on",
        default=str(user_runtime_dir() / "agent.sock"),
        metavar="PATH",
    )
    parser.add_env_option(
        "--db",
        help="SQLite database file for events, settings and reports",
        default=str(user_data_dir() / "agent.db"),
        metavar="PATH",
    )
    parser.add_env_option(
        "--timezone",
        help="IANA time zone the country is derived from (default: the system's)",
        default="",
        metavar="ZONE",
    )
    parser.add_env_option(
        "--retention-days",
        help="raw events older than this are pruned",
        default=400,
        type=positive_int,
        metavar="DAYS",
    )
    parser.add_env_option(
        "--server",
        help="the aggregation server (HOST:PORT, TLS) that weekly reports go to; unset: nothing is sent",
        default="",
        metavar="HOST:PORT",
    )
    parser.add_env_option(
        "--ca-file",
        help="CA certificates (PEM) that verify the aggregation server (default: the system's)",
        default="",
        metavar="PATH",
    )
    parser.add_env_switch("--disable", help="record nothing and send nothing (DO_NOT_TRACK=1 does the same)")
    parser.add_env_option(
        "--simulated-clock",
        help="for tests only (needs STATS_TESTING=1): take the time from this clock file",
        default="",
        metavar="PATH",
    )
    add_telemetry_options(parser)
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure("printernizer_stats.agent", args)
    if args.ca_file and not os.access(args.ca_file, os.R_OK):
        print(f"printernizer_stats.agent: cannot read the --ca-file {args.ca_file}", file=sys.stderr)
        return 1
    try:
        clock = clock_from(args.simulated_clock)
        kill_after_commits = int(os.environ.get(KILL_AFTER_COMMITS, "0") or 0)
        if kill_after_commits:
            require_testing(KILL_AFTER_COMMITS)
    except (TestingNotAllowed, ValueError) as exc:
        print(f"printernizer_stats.agent: {exc}", file=sys.stderr)
        return 1
    config = AgentServerConfig(
        socket_path=Path(args.socket).expanduser(),
        db_path=Path(args.db).expanduser(),
        agent=AgentConfig(
            timezone=args.timezone or system_timezone(),
            retention_days=args.retention_days,
            override=Override(do_not_track=env_flag("DO_NOT_TRACK"), agent_switch=args.disable),
        ),
        server_address=args.server or None,
        ca_file=args.ca_file or None,
        kill_after_commits=kill_after_commits,
    )
    try:
        asyncio.run(serve(config, clock=clock))
    except (SocketError, StorageError) as exc:
        print(f"printernizer_stats.agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
