"""The public ingest server: receives signed weekly reports over TLS and stores them."""

from printernizer_stats.common import quiet_grpc_core

quiet_grpc_core()
