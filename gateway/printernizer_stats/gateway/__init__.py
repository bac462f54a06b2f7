"""The REST gateway: the admin dashboard's API and the local privacy page."""

from printernizer_stats.common import quiet_grpc_core

quiet_grpc_core()
