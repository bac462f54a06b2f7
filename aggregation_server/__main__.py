"""`python -m aggregation_server`: the public ingest server for signed weekly reports."""

from __future__ import annotations

import argparse
import sys

from stats_common.cli import EnvArgumentParser, host_port, positive_int, user_data_dir


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="aggregation_server",
        env_prefix="AGGREGATION_SERVER_",
        description=__doc__,
    )
    parser.add_env_option(
        "--listen",
        help="address to serve TLS gRPC on",
        default="127.0.0.1:50443",
        type=host_port,
        metavar="HOST:PORT",
    )
    parser.add_env_option(
        "--database-url",
        help="SQLAlchemy database URL",
        default=f"sqlite+aiosqlite:///{user_data_dir() / 'aggregation.db'}",
        metavar="URL",
    )
    parser.add_env_option(
        "--tls-cert",
        help="server certificate (PEM); a self-signed one is made when unset",
        default="",
        metavar="PATH",
    )
    parser.add_env_option("--tls-key", help="server private key (PEM)", default="", metavar="PATH")
    parser.add_env_option(
        "--retention-days",
        help="weekly reports older than this are deleted",
        default=730,
        type=positive_int,
        metavar="DAYS",
    )
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    del args
    print(
        "aggregation_server: this service is not part of this release yet; only --help is available.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
