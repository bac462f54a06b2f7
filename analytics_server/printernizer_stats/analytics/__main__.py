"""`python -m printernizer_stats.analytics`: the maintainers' query service over the stored reports.

Serves the AnalyticsService over TLS; every call needs the admin token. It only
reads the aggregation server's database, whose weekly rollups the aggregation
server keeps current, so --database-url may be a PostgreSQL read replica. With
--smtp-host it e-mails a weekly summary (Mondays) and a monthly report (the 1st),
each claimed once in a writable database (on a replica: --mail-claims-database-url,
the primary). Without --tls-cert/--tls-key it uses the self-made CA and
certificate under --tls-dir (the aggregation server's, by default).
"""

from __future__ import annotations

import argparse
import smtplib
import sys
from pathlib import Path

from printernizer_stats.common.cli import EnvArgumentParser, host_port, positive_int, user_data_dir
from printernizer_stats.common.startup import add_tls_and_admin_options, prepare_database_url, run, start

from .email_reports import SECURITY_MODES, MailConfig
from .privacy import DEFAULT_MIN_GROUP_SIZE
from .server import AnalyticsServerConfig, send_test_email, serve


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="printernizer_stats.analytics", env_prefix="ANALYTICS_SERVER_", description=__doc__
    )
    parser.add_env_option(
        "--listen",
        help="address to serve TLS gRPC on",
        default="127.0.0.1:50444",
        type=host_port,
        metavar="HOST:PORT",
    )
    parser.add_env_option(
        "--database-url",
        help="SQLAlchemy database URL (the aggregation server's database, or a read replica of it)",
        default=f"sqlite:///{user_data_dir() / 'aggregation.db'}",
        metavar="URL",
    )
    parser.add_env_option(
        "--min-group-size",
        help="smallest group of installations ever published (k); every count is rounded to a multiple of it",
        default=DEFAULT_MIN_GROUP_SIZE,
        type=positive_int,
        metavar="K",
    )
    add_tls_and_admin_options(parser, "every call needs")
    parser.add_env_option(
        "--smtp-host",
        help="SMTP server for the e-mail reports (unset: no e-mail)",
        default="",
        metavar="HOST",
    )
    parser.add_env_option("--smtp-port", help="SMTP port", default=587, type=positive_int, metavar="PORT")
    parser.add_env_option(
        "--smtp-security",
        help=f"how the SMTP connection is protected: {', '.join(SECURITY_MODES)}",
        default="starttls",
        type=_security,
        metavar="MODE",
    )
    parser.add_env_option("--smtp-user", help="SMTP user name (unset: no login)", default="", metavar="NAME")
    parser.add_env_option(
        "--smtp-password-file", help="file holding the SMTP password", default="", metavar="PATH"
    )
    parser.add_env_option(
        "--smtp-ca-file",
        help="CA certificate that signs the SMTP server's certificate (default: the system's CAs)",
        default="",
        metavar="PATH",
    )
    parser.add_env_option(
        "--mail-from", help="sender address of the e-mail reports", default="", metavar="ADDRESS"
    )
    parser.add_env_option(
        "--mail-to", help="recipients of the e-mail reports, comma-separated", default="", metavar="ADDRESSES"
    )
    parser.add_env_option(
        "--mail-claims-database-url",
        help="the primary's database URL, used only to claim each e-mail report so that it is sent once; "
        "needed when --database-url is a read replica (default: --database-url)",
        default="",
        metavar="URL",
    )
    parser.add_env_switch(
        "--send-test-email",
        help="send the weekly summary of the last complete week to the recipients now, then exit",
    )
    parser.add_env_option("--log-level", help="logging level", default="INFO", metavar="LEVEL")
    return parser


def _security(value: str) -> str:
    if value not in SECURITY_MODES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(SECURITY_MODES)}, got {value!r}")
    return value


def mail_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> MailConfig | None:
    """The e-mail settings, or None when no SMTP host is set."""
    recipients = tuple(address.strip() for address in args.mail_to.split(",") if address.strip())
    if not args.smtp_host:
        if recipients or args.send_test_email or args.mail_claims_database_url:
            parser.error("--mail-to, --send-test-email and --mail-claims-database-url need --smtp-host")
        return None
    if not recipients or not args.mail_from:
        parser.error("--smtp-host needs --mail-from and --mail-to")
    password = ""
    if args.smtp_password_file:
        try:
            password = Path(args.smtp_password_file).expanduser().read_text().strip()
        except OSError as exc:
            parser.error(f"cannot read --smtp-password-file: {exc.strerror}")
    return MailConfig(
        host=args.smtp_host,
        port=args.smtp_port,
        security=args.smtp_security,
        sender=args.mail_from,
        recipients=recipients,
        username=args.smtp_user,
        password=password,
        ca_file=args.smtp_ca_file or None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, tls, admin_token = start(parser, argv)
    config = AnalyticsServerConfig(
        args.listen,
        prepare_database_url(args.database_url),
        tls,
        admin_token,
        min_group_size=args.min_group_size,
        mail=mail_config(parser, args),
        mail_claims_database_url=args.mail_claims_database_url or None,
    )
    if args.send_test_email:
        try:
            return run("printernizer_stats.analytics", send_test_email(config))
        except (OSError, smtplib.SMTPException) as exc:
            print(f"printernizer_stats.analytics: the test e-mail was not sent: {exc}", file=sys.stderr)
            return 1
    return run("printernizer_stats.analytics", serve(config))


if __name__ == "__main__":
    sys.exit(main())
