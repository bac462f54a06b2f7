"""The admin query service: answers the maintainers' questions about stored reports."""

from printernizer_stats.common import quiet_grpc_core

quiet_grpc_core()
