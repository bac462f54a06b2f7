"""`python -m aggregation_server`: the public ingest server for signed weekly reports.

Serves the IngestService over TLS. Without --tls-cert/--tls-key it makes its own
CA and server certificate (under --tls-dir) and prints where the CA is, for
agents to trust. Database migrations are applied at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from stats_common.admin import AdminTokenError, ensure_token_file
from stats_common.cli import EnvArgumentParser, host_port, non_negative_float, positive_int, user_data_dir

from .server import ServerConfig, serve
from .tls import ensure_self_made, given_files


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
    parser.add_env_option(
        "--tls-cert",
        help="server certificate (PEM); a self-made one is used when unset",
        default="",
        metavar="PATH",
    )
    parser.add_env_option("--tls-key", help="server private key (PEM)", default="", metavar="PATH")
    parser.add_env_option(
        "--tls-dir",
        help="where the self-made CA and certificate are kept",
        default=str(user_data_dir() / "tls"),
        metavar="DIR",
    )
    parser.add_env_option(
        "--retention-days",
        help="weekly reports older than this are deleted",
        default=730,
        type=positive_int,
        metavar="DAYS",
    )
    parser.add_env_option(
        "--admin-token-file",
        help="file holding the admin bearer token for the admin API; made on first start when missing",
        default=str(user_data_dir() / "admin-token"),
        metavar="PATH",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        if args.tls_cert:
            tls = given_files(Path(args.tls_cert), Path(args.tls_key))
        else:
            tls = ensure_self_made(Path(args.tls_dir).expanduser())
            print(
                f"aggregation_server: self-made TLS; agents trust the CA at {tls.ca_certificate}",
                file=sys.stderr,
            )
        token_file = Path(args.admin_token_file).expanduser()
        admin_token = ensure_token_file(token_file)
    except (OSError, AdminTokenError) as exc:
        print(f"aggregation_server: {exc}", file=sys.stderr)
        return 1
    print(f"aggregation_server: the admin token is in {token_file}", file=sys.stderr)
    if args.database_url.startswith("sqlite:///"):
        Path(args.database_url.removeprefix("sqlite:///")).expanduser().parent.mkdir(
            parents=True, exist_ok=True
        )
    config = ServerConfig(
        args.listen,
        args.database_url,
        tls,
        args.retention_days,
        admin_token=admin_token,
        peer_calls_per_second=args.peer_calls_per_second,
        global_calls_per_second=args.global_calls_per_second,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config))
    except SQLAlchemyError as exc:
        print(f"aggregation_server: cannot use the database: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
