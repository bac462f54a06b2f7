"""A simulated fleet of Printernizer installations, for the demo and the tests.

Each installation has a plausible, varied life: where it runs (deployment
mode, platform, CPU, country from its time zone's country), which printers it
manages, which features are on, how much it prints, and which errors it hits.
The fleet grows over the weeks and a few installations stop reporting. Two
events are planted so that the dashboard has something to show:

- an upgrade wave: a new minor version is released part-way through and most
  installations move to it over the following weeks;
- an error spike: the new version's first patch loses printer connections in
  one week (the next patch fixes it);
- a release regression: that patch also crashes (unclean shutdowns) and fails
  jobs (lost connections) far more often than the release before it, in
  every week it is in use, so release health flags it; the release and the
  fixed patch stay as healthy as the old version.

Users choose how much they share (consent levels): most everything, some only
the basics, their printers and features, or their usage too; the analytics
count each part over those who shared it.

Reports are signed with each installation's own Ed25519 key and sent through
the agent's real uplink (TLS, the ingest service), one submission per
installation holding all its weeks, as an agent that catches up would.
Everything is decided by the seed, so a run is reproducible.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from printernizer.stats.v1 import aggregated_stats_pb2, common_pb2, country_pb2, ingest_service_pb2
from printernizer_stats.agent.delivery import RETRYABLE, Uplink
from printernizer_stats.common import consent_levels
from printernizer_stats.common.errors import retry_delay
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.weeks import Week

C = country_pb2
COUNTRIES = [  # weights: a European-leaning open-source community
    (C.COUNTRY_DE, 28), (C.COUNTRY_US, 18), (C.COUNTRY_GB, 8), (C.COUNTRY_FR, 6), (C.COUNTRY_NL, 5),
    (C.COUNTRY_AT, 4), (C.COUNTRY_CH, 4), (C.COUNTRY_PL, 3), (C.COUNTRY_IT, 3), (C.COUNTRY_ES, 3),
    (C.COUNTRY_CA, 3), (C.COUNTRY_AU, 3), (C.COUNTRY_SE, 2), (C.COUNTRY_DK, 2), (C.COUNTRY_BE, 2),
    (C.COUNTRY_CZ, 1), (C.COUNTRY_JP, 1), (C.COUNTRY_NZ, 1), (C.COUNTRY_BR, 1), (C.COUNTRY_FI, 1),
]  # fmt: skip
P = common_pb2
DEPLOYMENTS = [
    (P.DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON, 36), (P.DEPLOYMENT_MODE_DOCKER, 34),
    (P.DEPLOYMENT_MODE_RASPBERRY_PI, 16), (P.DEPLOYMENT_MODE_STANDALONE, 12), (P.DEPLOYMENT_MODE_OTHER, 2),
]  # fmt: skip
PRINTERS = [
    (P.PRINTER_TYPE_BAMBU_LAB, 40), (P.PRINTER_TYPE_PRUSA, 24), (P.PRINTER_TYPE_KLIPPER, 14),
    (P.PRINTER_TYPE_OCTOPRINT, 10), (P.PRINTER_TYPE_CREALITY, 6), (P.PRINTER_TYPE_ANYCUBIC, 3),
    (P.PRINTER_TYPE_ELEGOO, 2), (P.PRINTER_TYPE_OTHER, 1),
]  # fmt: skip
FEATURES = {  # share of installations with the feature on
    P.FEATURE_LIBRARY: 0.85, P.FEATURE_THUMBNAILS: 0.8, P.FEATURE_AUTO_DOWNLOAD: 0.6,
    P.FEATURE_CAMERA: 0.45, P.FEATURE_NOTIFICATIONS: 0.4, P.FEATURE_GCODE_ANALYSIS: 0.35,
    P.FEATURE_MATERIAL_TRACKING: 0.3, P.FEATURE_WATCH_FOLDERS: 0.25, P.FEATURE_TIMELAPSE: 0.2,
    P.FEATURE_MQTT: 0.15, P.FEATURE_IDEAS: 0.1, P.FEATURE_BUSINESS_REPORTS: 0.05,
}  # fmt: skip
EVERYDAY_ERRORS = [  # (type, component, weight)
    (P.ERROR_TYPE_CONNECTION_TIMEOUT, P.COMPONENT_PRINTER_SERVICE, 5),
    (P.ERROR_TYPE_PRINTER_OFFLINE, P.COMPONENT_PRINTER_SERVICE, 4),
    (P.ERROR_TYPE_FILE_NOT_FOUND, P.COMPONENT_FILE_SERVICE, 2),
    (P.ERROR_TYPE_UNEXPECTED_RESPONSE, P.COMPONENT_API, 2),
    (P.ERROR_TYPE_AUTHENTICATION_FAILED, P.COMPONENT_PRINTER_SERVICE, 1),
    (P.ERROR_TYPE_DATABASE, P.COMPONENT_DATABASE, 1),
]
BUGGY_PATCH_ERROR = (P.ERROR_TYPE_CONNECTION_LOST, P.COMPONENT_PRINTER_SERVICE)
FAILURE_REASONS = [
    (P.JOB_FAILURE_REASON_CANCELLED, 40), (P.JOB_FAILURE_REASON_PRINTER_ERROR, 18),
    (P.JOB_FAILURE_REASON_FILAMENT_RUNOUT, 14), (P.JOB_FAILURE_REASON_CONNECTION_LOST, 10),
    (P.JOB_FAILURE_REASON_TIMEOUT, 6), (P.JOB_FAILURE_REASON_OTHER, 6), (P.JOB_FAILURE_REASON_UNKNOWN, 6),
]  # fmt: skip
DURATIONS = [
    (P.JOB_DURATION_BUCKET_UNDER_15_MINUTES, 8), (P.JOB_DURATION_BUCKET_UNDER_1_HOUR, 22),
    (P.JOB_DURATION_BUCKET_UNDER_4_HOURS, 38), (P.JOB_DURATION_BUCKET_UNDER_12_HOURS, 20),
    (P.JOB_DURATION_BUCKET_UNDER_24_HOURS, 6), (P.JOB_DURATION_BUCKET_AT_LEAST_24_HOURS, 2),
    (P.JOB_DURATION_BUCKET_UNKNOWN, 4),
]  # fmt: skip
# Per installation and week: the chance of a failed job, and of a week with an unclean shutdown.
JOB_FAILURE_RATE, BUGGY_JOB_FAILURE_RATE = 0.08, 0.3
CRASH_RATE, BUGGY_CRASH_RATE = 0.05, 0.45
# Failed jobs fall on a printer family in proportion to its printers, times
# this (the rest 1): an integration whose jobs fail more often than the others'.
FAMILY_FAILURE_WEIGHT: dict[int, int] = {P.PRINTER_TYPE_OCTOPRINT: 3}
# Most users share everything; the others stop at a level (consent_levels).
CONSENT_LEVELS = [
    (consent_levels.BASICS, 8), (consent_levels.PRINTERS_AND_FEATURES, 12), (consent_levels.USAGE, 20),
    (consent_levels.ERRORS, 60),
]  # fmt: skip
T = TypeVar("T")
PYTHONS = [((3, 11, 9), 35), ((3, 12, 7), 45), ((3, 13, 1), 20)]


def _pick(rng: random.Random, weighted: Sequence[tuple[T, int]]) -> T:
    return rng.choices([value for value, _ in weighted], [weight for _, weight in weighted])[0]


@dataclass(frozen=True)
class FleetPlan:
    """What to simulate: `installations` over the `weeks` ending with `last_week`.

    The new version (2.`new_minor`) is released `weeks // 2` weeks before the
    end; its first patch fails printer connections in the week
    `spike_weeks_ago` before the end."""

    installations: int
    weeks: int
    last_week: Week
    seed: int = 2026
    new_minor: int = 8
    spike_weeks_ago: int = 1

    def week_list(self) -> list[Week]:
        weeks = [self.last_week]
        while len(weeks) < self.weeks:
            weeks.append(weeks[-1].previous())
        return weeks[::-1]

    @property
    def release_index(self) -> int:
        return self.weeks - max(2, self.weeks // 2)

    @property
    def spike_index(self) -> int:
        return self.weeks - 1 - self.spike_weeks_ago


@dataclass
class SimulatedInstallation:
    """One installation's fixed traits and its signing key."""

    installation_id: bytes
    key: Ed25519PrivateKey
    deployment: int
    platform: int
    architecture: int
    country: int
    python: tuple[int, int, int]
    printers: dict[int, int]
    features: set[int]
    first_index: int  # the first week it reports
    last_index: int  # the last week it reports (churn)
    start_minor: int
    upgrade_index: int | None  # the week it moves to the new version, if it does
    activity: float  # jobs per printer per week
    error_proneness: float

    @property
    def consent_level(self) -> int:
        """How much of its reports its user chose to share (drawn apart from the
        rest of the fleet, so that levels change nothing else about it)."""
        rng = random.Random(f"level:{self.installation_id.hex()}")  # noqa: S311
        return _pick(rng, CONSENT_LEVELS)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _platform_and_architecture(rng: random.Random, deployment: int) -> tuple[int, int]:
    if deployment == P.DEPLOYMENT_MODE_RASPBERRY_PI:
        return P.PLATFORM_LINUX, _pick(rng, [(P.CPU_ARCHITECTURE_ARM64, 7), (P.CPU_ARCHITECTURE_ARMV7, 3)])
    if deployment == P.DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON:
        return P.PLATFORM_LINUX, _pick(rng, [(P.CPU_ARCHITECTURE_ARM64, 5), (P.CPU_ARCHITECTURE_X86_64, 5)])
    if deployment == P.DEPLOYMENT_MODE_STANDALONE:
        platform = _pick(rng, [(P.PLATFORM_WINDOWS, 5), (P.PLATFORM_MACOS, 3), (P.PLATFORM_LINUX, 2)])
        return platform, _pick(rng, [(P.CPU_ARCHITECTURE_X86_64, 8), (P.CPU_ARCHITECTURE_ARM64, 2)])
    return P.PLATFORM_LINUX, _pick(rng, [(P.CPU_ARCHITECTURE_X86_64, 8), (P.CPU_ARCHITECTURE_ARM64, 2)])


def build_fleet(plan: FleetPlan) -> list[SimulatedInstallation]:
    rng = random.Random(plan.seed)  # noqa: S311 - a reproducible simulation, not secrets
    fleet = []
    for number in range(plan.installations):
        deployment = _pick(rng, DEPLOYMENTS)
        platform, architecture = _platform_and_architecture(rng, deployment)
        printers: dict[int, int] = {}
        for _ in range(_pick(rng, [(1, 50), (2, 28), (3, 12), (5, 7), (12, 3)])):
            kind = _pick(rng, PRINTERS)
            printers[kind] = printers.get(kind, 0) + 1
        # Two in three were there from the start; the rest joined later (growth).
        first = 0 if number < plan.installations * 2 // 3 else rng.randrange(1, plan.weeks)
        last = plan.weeks - 1 if rng.random() > 0.06 else rng.randrange(first, plan.weeks)
        upgrades = rng.random() < 0.85
        delay = min(int(rng.expovariate(0.35)), plan.weeks)
        fleet.append(
            SimulatedInstallation(
                # A version-4 UUID, as an agent makes (from the seed, so a run is reproducible).
                installation_id=uuid.UUID(bytes=rng.randbytes(16), version=4).bytes,
                key=Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)),
                deployment=deployment,
                platform=platform,
                architecture=architecture,
                country=_pick(rng, COUNTRIES),
                python=_pick(rng, PYTHONS),
                printers=printers,
                features={f for f, share in FEATURES.items() if rng.random() < share},
                first_index=first,
                last_index=last,
                start_minor=plan.new_minor - _pick(rng, [(3, 1), (2, 3), (1, 6)]),
                upgrade_index=max(plan.release_index, first) + delay if upgrades else None,
                activity=rng.uniform(0.5, 6.0),
                error_proneness=rng.uniform(0.0, 1.5),
            )
        )
    return fleet


def _version(installation: SimulatedInstallation, plan: FleetPlan, index: int) -> tuple[int, int, int]:
    if installation.upgrade_index is not None and index >= installation.upgrade_index:
        # 2.N.0 at release, 2.N.1 (the buggy patch) from two weeks before the
        # spike, 2.N.2 (the fix) after it.
        if index > plan.spike_index:
            return 2, plan.new_minor, 2
        return 2, plan.new_minor, 1 if index >= plan.spike_index - 1 else 0
    return 2, installation.start_minor, 3


def weekly_report(
    installation: SimulatedInstallation, plan: FleetPlan, index: int, week: Week
) -> aggregated_stats_pb2.AggregatedStats:
    """The report `installation` sends for the week at `index` of the plan."""
    rng = random.Random(f"{plan.seed}:{installation.installation_id.hex()}:{index}")  # noqa: S311
    major, minor, patch = _version(installation, plan, index)
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3,
        consent_level=installation.consent_level,  # type: ignore[arg-type]
        report_id=report_id(installation.installation_id, week),
        installation=aggregated_stats_pb2.InstallationInfo(
            installation_id=installation.installation_id,
            app_version=common_pb2.Version(major=major, minor=minor, patch=patch),
            python_version=common_pb2.Version(
                major=installation.python[0], minor=installation.python[1], patch=installation.python[2]
            ),
            platform=installation.platform,  # type: ignore[arg-type]
            architecture=installation.architecture,  # type: ignore[arg-type]
            deployment_mode=installation.deployment,  # type: ignore[arg-type]
            country=installation.country,  # type: ignore[arg-type]
        ),
        period=week.to_proto(),
    )
    for printer_type, count in sorted(installation.printers.items()):
        report.printer_fleet.printers.add(printer_type=printer_type, count=count)
    printers = sum(installation.printers.values())
    buggy = (major, minor, patch) == (2, plan.new_minor, 1)
    created = max(0, round(rng.gauss(installation.activity * printers, 2)))
    failure_rate = BUGGY_JOB_FAILURE_RATE if buggy else JOB_FAILURE_RATE
    reasons: dict[common_pb2.JobFailureReason.ValueType, int] = {}
    for _ in range(created):
        if rng.random() < failure_rate:
            lost = buggy and rng.random() < 0.7  # the patch's own failures: lost connections
            reason = P.JOB_FAILURE_REASON_CONNECTION_LOST if lost else _pick(rng, FAILURE_REASONS)
            reasons[reason] = reasons.get(reason, 0) + 1
    failed = sum(reasons.values())
    usage = report.usage
    usage.jobs_created, usage.jobs_completed, usage.jobs_failed = created, created - failed, failed
    for reason, count in sorted(reasons.items()):
        usage.job_failures.add(reason=reason, count=count)
    durations: dict[common_pb2.JobDurationBucket.ValueType, int] = {}
    for _ in range(created - failed):
        duration = _pick(rng, DURATIONS)
        durations[duration] = durations.get(duration, 0) + 1
    for duration, count in sorted(durations.items()):
        usage.completed_job_durations.add(duration=duration, count=count)
    families = random.Random(f"{plan.seed}:{installation.installation_id.hex()}:{index}:families")  # noqa: S311
    _jobs_by_printer_type(usage, installation, families)
    usage.files_downloaded = created + rng.randrange(0, 5)
    usage.files_uploaded = rng.randrange(0, 3) + (created // 3)
    usage.uptime_hours = rng.choice([168, 168, 168, 120, 60])
    usage.app_starts = rng.choice([1, 1, 2, 3, 7])
    if rng.random() < (BUGGY_CRASH_RATE if buggy else CRASH_RATE):
        usage.unclean_shutdowns = 1 + (usage.app_starts > 2)
        usage.app_starts = max(usage.app_starts, usage.unclean_shutdowns)
        usage.uptime_hours = min(usage.uptime_hours, 120)
    usage.printer_connections = printers * usage.app_starts
    usage.printer_disconnections = printers * (usage.app_starts - 1) + rng.randrange(0, printers + 1)
    for feature in sorted(installation.features):
        report.features.add(feature=feature, enabled=True)
    errors: dict[tuple[int, int], int] = {}
    for _ in range(round(rng.expovariate(1.0) * installation.error_proneness * 2)):
        kind, where, _ = rng.choices(EVERYDAY_ERRORS, [w for *_, w in EVERYDAY_ERRORS])[0]
        errors[(kind, where)] = errors.get((kind, where), 0) + 1
    if buggy and index == plan.spike_index:
        errors[BUGGY_PATCH_ERROR] = errors.get(BUGGY_PATCH_ERROR, 0) + printers * rng.randrange(4, 10)
        usage.printer_disconnections = printers * 10
    for (error_type, component), count in sorted(errors.items()):
        report.errors.add(error_type=error_type, component=component, count=count)
    consent_levels.keep_only(report, installation.consent_level)
    return report


def _jobs_by_printer_type(
    usage: aggregated_stats_pb2.UsageCounts, installation: SimulatedInstallation, rng: random.Random
) -> None:
    """Each job on one of the installation's families, by their printers (a
    job with no printer configured on a family not known). Drawn apart from
    the report's other figures, which stay as they were."""
    families = sorted(installation.printers.items()) or [(P.PRINTER_TYPE_UNKNOWN, 1)]
    done = [weight for _, weight in families]
    lost = [weight * FAMILY_FAILURE_WEIGHT.get(family, 1) for family, weight in families]
    jobs: dict[int, list[int]] = {}
    for outcome, total, weights in ((0, usage.jobs_completed, done), (1, usage.jobs_failed, lost)):
        for _ in range(total):
            family = rng.choices([f for f, _ in families], weights)[0]
            jobs.setdefault(family, [0, 0])[outcome] += 1
    for family, (completed, failed) in sorted(jobs.items()):
        usage.jobs_by_printer_type.add(
            printer_type=common_pb2.PrinterType.ValueType(family), completed=completed, failed=failed
        )


def submission(
    installation: SimulatedInstallation, plan: FleetPlan
) -> ingest_service_pb2.SubmitReportsRequest | None:
    """All the weeks `installation` reports, signed, in one submission (None: it never reported)."""
    request = ingest_service_pb2.SubmitReportsRequest(
        installation_id=installation.installation_id, public_key=installation.public_key
    )
    for index, week in enumerate(plan.week_list()):
        if installation.first_index <= index <= installation.last_index:
            data = weekly_report(installation, plan, index, week).SerializeToString()
            request.reports.add(report=data, signature=installation.key.sign(data))
    return request if request.reports else None


@dataclass
class FleetProgress:
    sent: int = 0
    reports: int = 0
    retried: int = 0
    failed: list[str] = field(default_factory=list)


async def report_fleet(
    plan: FleetPlan,
    uplink: Uplink,
    concurrency: int = 4,
    on_progress: Callable[[FleetProgress, int], None] | None = None,
    max_retry_delay: float = 60.0,
) -> FleetProgress:
    """Send every installation's submission through `uplink`. A submission
    that fails in a way an agent retries (the agent's own list: the server
    down, overloaded, restarting, or its database away) is retried after the
    delay the server gives (at most `max_retry_delay`), as an agent would."""
    fleet = build_fleet(plan)
    progress = FleetProgress()
    queue: asyncio.Queue[ingest_service_pb2.SubmitReportsRequest] = asyncio.Queue()
    for installation in fleet:
        if (request := submission(installation, plan)) is not None:
            queue.put_nowait(request)
    total = queue.qsize()

    async def worker() -> None:
        while not queue.empty():
            request = queue.get_nowait()
            while True:
                try:
                    await uplink.submit(request)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in RETRYABLE:
                        progress.failed.append(f"{exc.code().name}: {exc.details()}")
                        break
                    progress.retried += 1
                    delay = retry_delay(exc)
                    await asyncio.sleep(min(max_retry_delay, delay.total_seconds() if delay else 0.5))
                    continue
                progress.sent += 1
                progress.reports += len(request.reports)
                break
            if on_progress is not None:
                on_progress(progress, total)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return progress
