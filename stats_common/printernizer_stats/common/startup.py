"""Starting a TLS server from the command line: the options and start-up steps
the aggregation and analytics servers share, each failure one clear line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .admin import AdminTokenError, ensure_token_file
from .cli import EnvArgumentParser, host_names, user_data_dir
from .telemetry import add_telemetry_options, configure
from .tls import TlsFiles, ensure_self_made, given_files


class StartupError(Exception):
    """Why a server cannot start, in one line for the operator."""


def add_tls_and_admin_options(parser: EnvArgumentParser, admin_help: str) -> None:
    """TLS, the admin token, and telemetry: what both TLS servers take."""
    add_telemetry_options(parser)
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
        "--tls-names",
        help="host names the self-made certificate is also valid for, comma-separated (besides localhost)",
        default="",
        type=host_names,
        metavar="NAMES",
    )
    parser.add_env_option(
        "--admin-token-file",
        help=f"file holding the admin bearer token {admin_help}; made on first start when missing",
        default=str(user_data_dir() / "admin-token"),
        metavar="PATH",
    )


def start(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, TlsFiles, str]:
    """Parse the options, set up logging, and load the TLS material and the
    admin token; a problem ends the program with one line and exit code 1."""
    args = parser.parse_args(argv)
    configure(parser.prog, args)
    try:
        tls, token = tls_and_admin_token(parser, args)
    except StartupError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return args, tls, token


def tls_and_admin_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[TlsFiles, str]:
    """The TLS material (given, or self-made) and the admin token; says where
    the self-made CA and the token are."""
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        if args.tls_cert:
            tls = given_files(Path(args.tls_cert), Path(args.tls_key))
        else:
            names = [name.strip() for name in args.tls_names.split(",") if name.strip()]
            tls = ensure_self_made(Path(args.tls_dir).expanduser(), names=names)
            print(
                f"{parser.prog}: self-made TLS; clients trust the CA at {tls.ca_certificate}", file=sys.stderr
            )
        token_file = Path(args.admin_token_file).expanduser()
        token = ensure_token_file(token_file)
    except (OSError, AdminTokenError) as exc:
        raise StartupError(str(exc)) from None
    print(f"{parser.prog}: the admin token is in {token_file}", file=sys.stderr)
    return tls, token


def prepare_database_url(url: str) -> str:
    """A SQLite file's directory is made; other URLs are left as they are."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url


def run(prog: str, server: Coroutine[Any, Any, None]) -> int:
    """Run a server until it stops; a database it cannot use, or settings it finds unusable once
    it sees the database (a StartupError), is one line, exit 1."""
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server)
    except SQLAlchemyError as exc:
        print(f"{prog}: cannot use the database: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
