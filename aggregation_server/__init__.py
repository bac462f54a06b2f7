"""The public ingest server: receives signed weekly reports over TLS and stores them."""

from stats_common import quiet_grpc_core

quiet_grpc_core()
