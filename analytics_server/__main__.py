"""`python -m analytics_server`: the admin query service over the stored reports."""

from __future__ import annotations

import argparse
import sys

from stats_common.cli import EnvArgumentParser, host_port, positive_int, user_data_dir


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="analytics_server",
        env_prefix="ANALYTICS_SERVER_",
        description=__doc__,
    )
    parser.add_env_option(
        "--listen",
        help="address to serve gRPC on",
        default="127.0.0.1:50444",
        type=host_port,
        metavar="HOST:PORT",
    )
    parser.add_env_option(
        "--database-url",
        help="SQLAlchemy database URL (the aggregation server's database)",
        default=f"sqlite+aiosqlite:///{user_data_dir() / 'aggregation.db'}",
        metavar="URL",
    )
    parser.add_env_option(
        "--min-group-size",
        help="smallest group of installations ever published (k)",
        default=5,
        type=positive_int,
        metavar="K",
    )
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    del args
    print(
        "analytics_server: this service is not part of this release yet; only --help is available.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
