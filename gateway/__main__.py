"""`python -m gateway`: the REST gateway: the admin dashboard's API and the local privacy page."""

from __future__ import annotations

import argparse
import sys

from stats_common.cli import EnvArgumentParser, host_port, user_runtime_dir


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="gateway",
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
        help="the local agent's Unix socket",
        default=str(user_runtime_dir() / "agent.sock"),
        metavar="PATH",
    )
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    del args
    print("gateway: this service is not part of this release yet; only --help is available.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
