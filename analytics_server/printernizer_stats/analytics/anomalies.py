"""Anomaly rules over complete weeks (plain functions, no database).

Every rule compares one complete week with a robust baseline: the median of
the same figure over the 8 complete weeks before it (at least 4 of them with
data). A rule never fires on a zero baseline, on error counts below a minimum,
or on a fleet smaller than k, so a new or tiny fleet raises nothing; a fall to
zero active installations or received reports does fire (something broke). Each alert states its
threshold and carries a severity.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from printernizer.stats.v1 import analytics_service_pb2

Kind = analytics_service_pb2.AnomalyKind
Severity = analytics_service_pb2.Severity

BASELINE_WEEKS = 8
MIN_HISTORY_WEEKS = 4
# Active installations: a fall below 70 % of the baseline warns, below 50 % is critical.
DROP_WARNING, DROP_CRITICAL = 0.7, 0.5
# A rise above 150 % is worth knowing, above 200 % a warning.
SPIKE_INFO, SPIKE_WARNING = 1.5, 2.0
# Errors per active installation: twice the baseline warns, four times is critical.
ERROR_WARNING, ERROR_CRITICAL = 2.0, 4.0
# Fewer errors than this in the week never raise an error alert.
MIN_ERRORS = 10
# Reports received: below half or above twice the baseline.
VOLUME_LOW, VOLUME_HIGH = 0.5, 2.0


@dataclass(frozen=True)
class Alert:
    kind: int
    severity: int
    week: int  # YYYYWW
    observed: float
    baseline: float
    threshold: float
    description: str
    scope: tuple[int, ...] = field(default=())  # an app version, for per-version rules


def baseline(history: Sequence[float]) -> float | None:
    """The median of the last BASELINE_WEEKS values that are not zero (the
    lower of the middle two when their number is even, so the baseline is
    always one of the published figures); None when fewer than
    MIN_HISTORY_WEEKS weeks have data."""
    recent = [v for v in history[-BASELINE_WEEKS:] if v > 0]
    return statistics.median_low(recent) if len(recent) >= MIN_HISTORY_WEEKS else None


def active_alerts(week: int, observed: int, history: Sequence[int], min_size: int) -> list[Alert]:
    base = baseline(history)
    if base is None or base < min_size:
        return []
    if observed < base * DROP_WARNING:
        severity = (
            Severity.SEVERITY_CRITICAL if observed < base * DROP_CRITICAL else Severity.SEVERITY_WARNING
        )
        return [
            Alert(
                Kind.ANOMALY_KIND_ACTIVE_DROP,
                severity,
                week,
                observed,
                base,
                base * DROP_WARNING,
                f"active installations fell below {DROP_WARNING:.0%} of the median of the previous weeks "
                f"(critical below {DROP_CRITICAL:.0%})",
            )
        ]
    if observed > base * SPIKE_INFO:
        severity = Severity.SEVERITY_WARNING if observed > base * SPIKE_WARNING else Severity.SEVERITY_INFO
        return [
            Alert(
                Kind.ANOMALY_KIND_ACTIVE_SPIKE,
                severity,
                week,
                observed,
                base,
                base * SPIKE_INFO,
                f"active installations rose above {SPIKE_INFO:.0%} of the median of the previous weeks "
                f"(a warning above {SPIKE_WARNING:.0%})",
            )
        ]
    return []


def error_alerts(
    week: int,
    errors: int,
    active: int,
    history: Sequence[float],
    kind: int = Kind.ANOMALY_KIND_ERROR_SPIKE,
    scope: tuple[int, ...] = (),
) -> list[Alert]:
    """`history`: errors per active installation in the weeks before."""
    base = baseline(history)
    if base is None or errors < MIN_ERRORS or active == 0:
        return []
    rate = errors / active
    if rate <= base * ERROR_WARNING:
        return []
    severity = Severity.SEVERITY_CRITICAL if rate > base * ERROR_CRITICAL else Severity.SEVERITY_WARNING
    what = "errors per active installation" + (" of this version" if scope else "")
    return [
        Alert(
            kind,
            severity,
            week,
            rate,
            base,
            base * ERROR_WARNING,
            f"{what} rose above {ERROR_WARNING:g} times the median of the previous weeks "
            f"(critical above {ERROR_CRITICAL:g} times; at least {MIN_ERRORS} errors)",
            scope,
        )
    ]


def volume_alerts(week: int, received: int, history: Sequence[int], min_size: int) -> list[Alert]:
    base = baseline(history)
    if base is None or base < min_size:
        return []
    if VOLUME_LOW * base <= received <= VOLUME_HIGH * base:
        return []
    low = received < VOLUME_LOW * base
    return [
        Alert(
            Kind.ANOMALY_KIND_SUBMISSION_VOLUME,
            Severity.SEVERITY_WARNING if low else Severity.SEVERITY_INFO,
            week,
            received,
            base,
            base * (VOLUME_LOW if low else VOLUME_HIGH),
            f"reports received in the week were {'below' if low else 'above'} "
            f"{VOLUME_LOW if low else VOLUME_HIGH:.0%} of the median of the previous weeks",
        )
    ]
