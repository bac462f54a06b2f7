"""`python -m stats_agent`: the local statistics agent beside Printernizer."""

from __future__ import annotations

import argparse
import sys

from stats_common.cli import EnvArgumentParser, positive_int, user_data_dir, user_runtime_dir


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="stats_agent",
        env_prefix="STATS_AGENT_",
        description=__doc__,
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
    parser.add_env_switch("--disable", help="record nothing and send nothing (DO_NOT_TRACK=1 does the same)")
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    del args
    print(
        "stats_agent: this service is not part of this release yet; only --help is available.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
