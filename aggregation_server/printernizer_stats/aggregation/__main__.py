"""`python -m printernizer_stats.aggregation`: the public ingest server for signed weekly reports.

Serves the IngestService over TLS, and keeps the analytics' weekly rollups current
(at start and every --rollup-refresh-seconds). Without --tls-cert/--tls-key it makes its own
CA and server certificate (under --tls-dir) and prints where the CA is, for
agents to trust. Database migrations are applied at start (--migrations
apply), or only applied (only: then it exits), or left to such a run (skip:
for replicas started after it).
"""

from __future__ import annotations

import sys

from printernizer_stats.common.cli import (
    EnvArgumentParser,
    host_port,
    non_negative_float,
    positive_int,
    user_data_dir,
)
from printernizer_stats.common.clock import TestingNotAllowed, clock_from
from printernizer_stats.common.startup import add_tls_and_admin_options, prepare_database_url, run, start
from printernizer_stats.store.database import current_revision, upgrade
from sqlalchemy.exc import SQLAlchemyError

from .ingest import DEFAULT_RETENTION_DAYS
from .server import AggregationServerConfig, serve


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="printernizer_stats.aggregation", env_prefix="AGGREGATION_SERVER_", description=__doc__
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
        help="weekly reports older than this are deleted (and refused when they arrive)",
        default=DEFAULT_RETENTION_DAYS,
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
    parser.add_env_option(
        "--rollup-refresh-seconds",
        help="how often the analytics' weekly rollups are brought up to date (on PostgreSQL by one "
        "replica at a time)",
        default=60,
        type=positive_int,
        metavar="SECONDS",
    )
    parser.add_env_option(
        "--migrations",
        help="apply the database migrations at start (apply), apply them and exit (only), or not (skip)",
        default="apply",
        choices=["apply", "only", "skip"],
    )
    parser.add_env_option(
        "--simulated-clock",
        help="for tests only (needs STATS_TESTING=1): take the time from this clock file",
        default="",
        metavar="PATH",
    )
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if parser.parse_args(argv).migrations == "only":
        return apply_migrations(parser, argv)
    args, tls, admin_token = start(parser, argv)
    try:
        clock = clock_from(args.simulated_clock)
    except TestingNotAllowed as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    config = AggregationServerConfig(
        args.listen,
        prepare_database_url(args.database_url),
        tls,
        args.retention_days,
        admin_token=admin_token,
        peer_calls_per_second=args.peer_calls_per_second,
        global_calls_per_second=args.global_calls_per_second,
        migrate=args.migrations == "apply",
        rollup_refresh_seconds=args.rollup_refresh_seconds,
    )
    return run("printernizer_stats.aggregation", serve(config, clock=clock))


def apply_migrations(parser: EnvArgumentParser, argv: list[str] | None) -> int:
    """Bring the database to the current schema and say so; one line on failure."""
    args = parser.parse_args(argv)
    url = prepare_database_url(args.database_url)
    try:
        upgrade(url)
        revision = current_revision(url)
    except SQLAlchemyError as exc:
        first_line = str(exc).splitlines()[0]
        print(f"{parser.prog}: the migrations failed: {first_line}", file=sys.stderr)
        return 1
    print(f"{parser.prog}: the database is at schema revision {revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
