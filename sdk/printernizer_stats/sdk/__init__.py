"""The SDK Printernizer imports to record usage events.

    from printernizer_stats.sdk import StatsClient, PrinterType, Component

    stats = StatsClient()                      # the agent's default socket
    stats.app_started("2.7.0", DeploymentMode.DOCKER)
    stats.job_completed(PrinterType.BAMBU_LAB, duration_seconds=3600)
    stats.error(exc, Component.PRINTER_SERVICE)  # the exception's class only

Nothing here ever blocks the caller or raises into it: events go into a
bounded in-memory buffer that a background thread sends to the local agent in
batches, at most about once a second (or per 1,000 events).
"""

from ._generated.printernizer.stats.v1 import (
    AppStarted,
    AppStopped,
    Component,
    Country,
    CpuArchitecture,
    DeploymentMode,
    ErrorOccurred,
    ErrorType,
    Feature,
    FeatureDisabled,
    FeatureEnabled,
    FileDownloaded,
    FileSizeBucket,
    FileType,
    FileUploaded,
    JobCompleted,
    JobCreated,
    JobDurationBucket,
    JobFailed,
    JobFailureReason,
    Platform,
    PrinterConnected,
    PrinterDisconnected,
    PrinterFleetObserved,
    PrinterType,
    PrinterTypeCount,
    UsageEvent,
    Version,
)
from .client import ClientStats, StatsClient
from .mapping import (
    error_type_for,
    file_size_bucket,
    job_duration_bucket,
    parse_version,
    python_version,
    this_architecture,
    this_platform,
)

__all__ = [
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
    "error_type_for",
    "file_size_bucket",
    "job_duration_bucket",
    "parse_version",
    "python_version",
    "this_architecture",
    "this_platform",
]
