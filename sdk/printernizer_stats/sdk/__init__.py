"""The SDK Printernizer imports to record usage events.

    from printernizer_stats.sdk import StatsClient, PrinterType, Component

    stats = StatsClient()                      # the agent's default socket
    stats.app_started("2.7.0", DeploymentMode.DOCKER)
    stats.job_completed(PrinterType.BAMBU_LAB, duration_seconds=3600)
    stats.error(exc, Component.PRINTER_SERVICE)  # the exception's class only

Nothing here ever blocks the caller or raises into it: events go into a
bounded in-memory buffer that a background thread sends to the local agent in
batches, at most about once a second (or per 1,000 events).

The core needs only grpcio and protobuf. The contract's messages as typed
dataclasses (UsageEvent, AppStarted, ... for `StatsClient.record`) are
betterproto2's: install the `dataclasses` extra
(`pip install printernizer-stats-sdk[dataclasses]`); they are imported on first use.

For a host's own tests, `printernizer_stats.sdk.testing.InMemoryStatsClient` is
the same client recording into memory (docs/sdk.md).
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._generated.enums import (
    Component,
    CpuArchitecture,
    DeploymentMode,
    ErrorType,
    Feature,
    FileSizeBucket,
    FileType,
    JobDurationBucket,
    JobFailureReason,
    Platform,
    PrinterType,
)
from .client import ClientStats, StatsClient
from .mapping import (
    error_type_for,
    file_size_bucket,
    file_type_for,
    job_duration_bucket,
    job_failure_reason,
    parse_version,
    python_version,
    this_architecture,
    this_platform,
)
from .printernizer import (
    BAMBU_FAILURE_REASONS,
    PRINTERNIZER_COMPONENTS,
    PRINTERNIZER_ERROR_TYPES,
    component_for_exception,
    printer_type_for,
)

__all__ = [
    "BAMBU_FAILURE_REASONS",
    "PRINTERNIZER_COMPONENTS",
    "PRINTERNIZER_ERROR_TYPES",
    "AppStarted",
    "AppStopped",
    "ClientStats",
    "Component",
    "Country",
    "CpuArchitecture",
    "DeploymentMode",
    "ErrorOccurred",
    "ErrorType",
    "Feature",
    "FeatureDisabled",
    "FeatureEnabled",
    "FileDownloaded",
    "FileSizeBucket",
    "FileType",
    "FileUploaded",
    "JobCompleted",
    "JobCreated",
    "JobDurationBucket",
    "JobFailed",
    "JobFailureReason",
    "Platform",
    "PrinterConnected",
    "PrinterDisconnected",
    "PrinterFleetObserved",
    "PrinterType",
    "PrinterTypeCount",
    "StatsClient",
    "UsageEvent",
    "Version",
    "component_for_exception",
    "error_type_for",
    "file_size_bucket",
    "file_type_for",
    "job_duration_bucket",
    "job_failure_reason",
    "parse_version",
    "printer_type_for",
    "python_version",
    "this_architecture",
    "this_platform",
]

# betterproto2's message dataclasses, imported when first asked for (PEP 562).
_DATACLASSES = frozenset(
    {
        "AppStarted",
        "AppStopped",
        "ErrorOccurred",
        "FeatureDisabled",
        "FeatureEnabled",
        "FileDownloaded",
        "FileUploaded",
        "JobCompleted",
        "JobCreated",
        "JobFailed",
        "PrinterConnected",
        "PrinterDisconnected",
        "PrinterFleetObserved",
        "PrinterTypeCount",
        "UsageEvent",
        "Version",
    }
)

if TYPE_CHECKING:
    from ._generated.country import Country
    from ._generated.printernizer.stats.v1 import (
        AppStarted,
        AppStopped,
        ErrorOccurred,
        FeatureDisabled,
        FeatureEnabled,
        FileDownloaded,
        FileUploaded,
        JobCompleted,
        JobCreated,
        JobFailed,
        PrinterConnected,
        PrinterDisconnected,
        PrinterFleetObserved,
        PrinterTypeCount,
        UsageEvent,
        Version,
    )


def __getattr__(name: str) -> Any:
    if name == "Country":  # 2 MB as an IntEnum: loaded when first asked for
        from ._generated.country import Country

        return Country
    if name not in _DATACLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        messages = importlib.import_module(f"{__name__}._generated.printernizer.stats.v1")
    except ImportError as exc:
        raise ImportError(
            f"{name} is one of the contract's dataclasses, which need betterproto2: "
            "pip install 'printernizer-stats-sdk[dataclasses]'"
        ) from exc
    return getattr(messages, name)
