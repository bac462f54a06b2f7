"""Coarsening on the device: what the host knows, turned into the contract's enums.

Exact durations and sizes become buckets, exception classes become error types
(never a message or a traceback), version strings become numbers.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import math
import platform as _platform
import re
import sys
from collections.abc import Mapping
from pathlib import PurePath

from printernizer.stats.v1.common_pb2 import Version

from ._generated.enums import (
    CpuArchitecture,
    ErrorType,
    FileSizeBucket,
    FileType,
    JobDurationBucket,
    JobFailureReason,
    Platform,
)

_MINUTE, _HOUR = 60.0, 3600.0
_DURATION_BOUNDS = (
    (15 * _MINUTE, JobDurationBucket.UNDER_15_MINUTES),
    (_HOUR, JobDurationBucket.UNDER_1_HOUR),
    (4 * _HOUR, JobDurationBucket.UNDER_4_HOURS),
    (12 * _HOUR, JobDurationBucket.UNDER_12_HOURS),
    (24 * _HOUR, JobDurationBucket.UNDER_24_HOURS),
)
_MB = 1024 * 1024
_SIZE_BOUNDS = (
    (_MB, FileSizeBucket.UNDER_1_MB),
    (10 * _MB, FileSizeBucket.UNDER_10_MB),
    (100 * _MB, FileSizeBucket.UNDER_100_MB),
    (1024 * _MB, FileSizeBucket.UNDER_1_GB),
)


_DURATION_LIMITS = [bound for bound, _ in _DURATION_BOUNDS]
_DURATION_BUCKETS = [bucket for _, bucket in _DURATION_BOUNDS] + [JobDurationBucket.AT_LEAST_24_HOURS]
_SIZE_LIMITS = [bound for bound, _ in _SIZE_BOUNDS]
_SIZE_BUCKETS = [bucket for _, bucket in _SIZE_BOUNDS] + [FileSizeBucket.AT_LEAST_1_GB]


def job_duration_bucket(seconds: float | None) -> JobDurationBucket:
    """The bucket whose upper bound is the first one above `seconds`; UNKNOWN
    when the duration was not measured (None, NaN, infinite or negative)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return JobDurationBucket.UNKNOWN
    return _DURATION_BUCKETS[bisect.bisect_right(_DURATION_LIMITS, seconds)]


def job_failure_reason(reason: JobFailureReason | None) -> JobFailureReason:
    """None (the app does not know why) -> UNKNOWN; UNSPECIFIED likewise."""
    if reason is None or reason == JobFailureReason.UNSPECIFIED:
        return JobFailureReason.UNKNOWN
    return reason


def file_size_bucket(size_bytes: int) -> FileSizeBucket:
    return _SIZE_BUCKETS[bisect.bisect_right(_SIZE_LIMITS, size_bytes)]


FILE_TYPES: Mapping[str, FileType] = {
    "3mf": FileType.THREE_MF,
    "stl": FileType.STL,
    "obj": FileType.OBJ,
    "ply": FileType.PLY,
    "gcode": FileType.GCODE,
    "gco": FileType.GCODE,
    "g": FileType.GCODE,
    "bgcode": FileType.BGCODE,
    "step": FileType.STEP,
    "stp": FileType.STEP,
}


def file_type_for(name: str | None) -> tuple[FileType, bool]:
    """(FileType, placed) from a file name ("benchy.gcode.3mf" -> THREE_MF), an
    extension (".ply") or Printernizer's type string ("bgcode"). Only the
    extension is looked at; anything unlisted -> OTHER, placed=False."""
    if not name:
        return FileType.OTHER, False
    text = PurePath(name.strip().lower()).name or name.strip().lower()
    suffix = text.rsplit(".", 1)[-1]  # "benchy.gcode.3mf" -> "3mf", ".ply" -> "ply", "bgcode" -> "bgcode"
    found = FILE_TYPES.get(suffix)
    return (found, True) if found is not None else (FileType.OTHER, False)


_VERSION = re.compile(r"^\s*v?(\d{1,5})(?:\.(\d{1,5}))?(?:\.(\d{1,5}))?(.*)$")


def parse_version(text: str) -> Version:
    """ "2.7.0" -> 2/7/0; anything after the numbers ("-beta1", "rc2", "+dev")
    only marks a pre-release. Unparseable text gives 0.0.0 (never the text)."""
    match = _VERSION.match(text)
    if match is None:
        return Version()
    major, minor, patch, rest = match.groups()
    return Version(
        major=int(major), minor=int(minor or 0), patch=int(patch or 0), prerelease=bool(rest.strip())
    )


def python_version() -> Version:
    info = sys.version_info
    return Version(
        major=info.major, minor=info.minor, patch=info.micro, prerelease=info.releaselevel != "final"
    )


def this_platform() -> Platform:
    name = sys.platform
    if name.startswith("linux"):
        return Platform.LINUX
    if name in ("win32", "cygwin"):
        return Platform.WINDOWS
    if name == "darwin":
        return Platform.MACOS
    if name.startswith("freebsd"):
        return Platform.FREEBSD
    return Platform.OTHER


def this_architecture() -> CpuArchitecture:
    machine = _platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return CpuArchitecture.X86_64
    if machine in ("aarch64", "arm64"):
        return CpuArchitecture.ARM64
    if machine.startswith("armv7") or machine == "armv8l":
        return CpuArchitecture.ARMV7
    return CpuArchitecture.OTHER


# Most specific first: the first matching class wins.
_ERROR_TYPES: tuple[tuple[type[BaseException], ErrorType], ...] = (
    (ConnectionRefusedError, ErrorType.CONNECTION_REFUSED),
    (ConnectionResetError, ErrorType.CONNECTION_LOST),
    (ConnectionAbortedError, ErrorType.CONNECTION_LOST),
    (BrokenPipeError, ErrorType.CONNECTION_LOST),
    (asyncio.TimeoutError, ErrorType.TIMEOUT),
    (TimeoutError, ErrorType.TIMEOUT),
    (ConnectionError, ErrorType.CONNECTION_LOST),
    (PermissionError, ErrorType.PERMISSION_DENIED),
    (FileNotFoundError, ErrorType.FILE_NOT_FOUND),
    (MemoryError, ErrorType.OUT_OF_MEMORY),
    (UnicodeError, ErrorType.PROTOCOL),
    (ValueError, ErrorType.VALIDATION),
    (TypeError, ErrorType.VALIDATION),
)

# Class names of common libraries' exceptions, matched without importing them.
_ERROR_NAMES: tuple[tuple[str, ErrorType], ...] = (
    ("ConnectTimeout", ErrorType.CONNECTION_TIMEOUT),
    ("ConnectionTimeout", ErrorType.CONNECTION_TIMEOUT),
    ("ReadTimeout", ErrorType.TIMEOUT),
    ("AuthenticationError", ErrorType.AUTHENTICATION_FAILED),
    ("Unauthorized", ErrorType.AUTHENTICATION_FAILED),
    ("ValidationError", ErrorType.VALIDATION),
    ("DatabaseError", ErrorType.DATABASE),
    ("OperationalError", ErrorType.DATABASE),
    ("SQLAlchemyError", ErrorType.DATABASE),
    ("JSONDecodeError", ErrorType.UNEXPECTED_RESPONSE),
    ("ProtocolError", ErrorType.PROTOCOL),
)


def error_type_for(
    exc: BaseException,
    extra: dict[type[BaseException], ErrorType] | None = None,
    names: Mapping[str, ErrorType] | None = None,
) -> ErrorType:
    """The error type of an exception, from its class alone: `extra` (classes),
    then `names` (class names along the MRO, most specific first: a host's own
    exceptions without importing them), then the standard library's."""
    cls = type(exc)
    for known, error_type in (extra or {}).items():
        if isinstance(exc, known):
            return error_type
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return ErrorType.DISK_FULL
    if names:
        for klass in cls.__mro__:
            named = names.get(klass.__name__)
            if named is not None:
                return named
    for known_cls, error_type in _ERROR_TYPES:
        if isinstance(exc, known_cls):
            return error_type
    if any(klass.__module__ == "sqlite3" for klass in cls.__mro__):  # without importing sqlite3
        return ErrorType.DATABASE
    class_names = {klass.__name__ for klass in cls.__mro__}
    for name, error_type in _ERROR_NAMES:
        if name in class_names:
            return error_type
    return ErrorType.OTHER
