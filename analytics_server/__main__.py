"""`python -m analytics_server`: the maintainers' query service over the stored reports.

Serves the AnalyticsService over TLS; every call needs the admin token. It reads
the aggregation server's database and keeps its weekly rollups current. Without
--tls-cert/--tls-key it uses the self-made CA and certificate under --tls-dir
(the aggregation server's, by default).
"""

from __future__ import annotations

import sys

from stats_common.cli import EnvArgumentParser, host_port, positive_int, user_data_dir
from stats_common.startup import add_tls_and_admin_options, prepare_database_url, run, start

from .server import ServerConfig, serve


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="analytics_server", env_prefix="ANALYTICS_SERVER_", description=__doc__)
    parser.add_env_option(
        "--listen",
        help="address to serve TLS gRPC on",
        default="127.0.0.1:50444",
        type=host_port,
        metavar="HOST:PORT",
    )
    parser.add_env_option(
        "--database-url",
        help="SQLAlchemy database URL (the aggregation server's database)",
        default=f"sqlite:///{user_data_dir() / 'aggregation.db'}",
        metavar="URL",
    )
    parser.add_env_option(
        "--min-group-size",
        help="smallest group of installations ever published (k)",
        default=5,
        type=positive_int,
        metavar="K",
    )
    parser.add_env_option(
        "--refresh-seconds",
        help="how often the weekly rollups are brought up to date",
        default=60,
        type=positive_int,
        metavar="SECONDS",
    )
    add_tls_and_admin_options(parser, "every call needs")
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, tls, admin_token = start(build_parser(), argv)
    config = ServerConfig(
        args.listen,
        prepare_database_url(args.database_url),
        tls,
        admin_token,
        min_group_size=args.min_group_size,
        refresh_seconds=args.refresh_seconds,
    )
    return run("analytics_server", serve(config))


if __name__ == "__main__":
    sys.exit(main())
