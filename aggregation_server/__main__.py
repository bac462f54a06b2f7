"""`python -m aggregation_server`: the public ingest server for signed weekly reports.

Serves the IngestService over TLS. Without --tls-cert/--tls-key it makes its own
CA and server certificate (under --tls-dir) and prints where the CA is, for
agents to trust. Database migrations are applied at start.
"""

from __future__ import annotations

import sys

from stats_common.cli import EnvArgumentParser, host_port, non_negative_float, positive_int, user_data_dir
from stats_common.startup import add_tls_and_admin_options, prepare_database_url, run, start

from .server import ServerConfig, serve


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="aggregation_server", env_prefix="AGGREGATION_SERVER_", description=__doc__
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
        default=f"sqlite:///{user_data_dir() / 'aggregation.db'}",
        metavar="URL",
    )
    add_tls_and_admin_options(parser, "for the admin API")
    parser.add_env_option(
        "--retention-days",
        help="weekly reports older than this are deleted",
        default=730,
        type=positive_int,
        metavar="DAYS",
    )
    parser.add_env_option(
        "--peer-calls-per-second",
        help="calls allowed per client address, in memory only (0: no limit, e.g. behind a proxy)",
        default=5.0,
        type=non_negative_float,
        metavar="RATE",
    )
    parser.add_env_option(
        "--global-calls-per-second",
        help="calls allowed from all clients together, per process (0: no limit)",
        default=2000.0,
        type=non_negative_float,
        metavar="RATE",
    )
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, tls, admin_token = start(build_parser(), argv)
    config = ServerConfig(
        args.listen,
        prepare_database_url(args.database_url),
        tls,
        args.retention_days,
        admin_token=admin_token,
        peer_calls_per_second=args.peer_calls_per_second,
        global_calls_per_second=args.global_calls_per_second,
    )
    return run("aggregation_server", serve(config))


if __name__ == "__main__":
    sys.exit(main())
