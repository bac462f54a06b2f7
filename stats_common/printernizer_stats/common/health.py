"""Asking a gRPC server whether it is serving (grpc.health.v1), from code or
from the command line (`python -m printernizer_stats.common.health`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

_CHECK = "/grpc.health.v1.Health/Check"


def is_serving(
    target: str,
    service: str = "",
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, str]] = (),
) -> bool:
    """True when the server at `target` (e.g. "unix:/path") answers SERVING;
    over TLS when `credentials` are given."""
    channel = (
        grpc.secure_channel(target, credentials, options=list(options))
        if credentials is not None
        else grpc.insecure_channel(target, options=list(options))
    )
    with channel:
        check = channel.unary_unary(
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply: health_pb2.HealthCheckResponse = check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m printernizer_stats.common.health",
        description="Exit 0 when the server answers SERVING, 1 otherwise (for health checks and scripts).",
    )
    parser.add_argument("target", help="HOST:PORT of a TLS server, or unix:PATH of an agent's socket")
    parser.add_argument("--ca-file", help="CA certificate to verify a TLS server with (else: plaintext)")
    parser.add_argument("--server-name", help="the name the server's certificate is checked against")
    parser.add_argument("--service", default="", help="a service's full name (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m printernizer_stats.common.health TARGET`: exit 0 when the server answers
    SERVING, 1 otherwise."""
    args = build_parser().parse_args(argv)
    credentials = None
    options: list[tuple[str, str]] = []
    if args.ca_file:
        try:
            roots = Path(args.ca_file).read_bytes()
        except OSError as exc:
            print(f"cannot read {args.ca_file}: {exc.strerror}", file=sys.stderr)
            return 1
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        if args.server_name:
            options.append(("grpc.ssl_target_name_override", args.server_name))
    serving = is_serving(args.target, args.service, args.timeout, credentials, options)
    print("SERVING" if serving else "NOT SERVING")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
