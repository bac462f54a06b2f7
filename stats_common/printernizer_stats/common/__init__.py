"""Code shared by every part of the usage-statistics system: the contract's
rules (free-text ban, schema versions, field documentation) and the command
line conventions of the services."""

import os


def quiet_grpc_core() -> None:
    """Let gRPC's core library log only errors, unless the operator set
    GRPC_VERBOSITY. It writes to stderr by itself, past the structured logs, and
    its lower levels are noise that may name peers. Takes effect only when called
    before grpc is imported: the servers' packages call it first thing (the
    agent's does not, since Printernizer imports it for the SDK)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
