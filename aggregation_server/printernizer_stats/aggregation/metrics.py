"""The aggregation server's metrics (docs/operations.md says what each means).

Refusals, rate limits and durations are recorded at the servicer's boundary,
reports and deletions by the ingest domain once it answers them: they count
what callers were answered. The rollup lag is measured by the server's
rollup job. No attribute holds an address or an installation: only outcomes
and reasons.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from opentelemetry import metrics
from printernizer_stats.common.telemetry import observe_gauge

_METER = "printernizer_stats.aggregation_server"
_meter = metrics.get_meter(_METER)

REPORTS = _meter.create_counter(
    "stats.ingest.reports",
    unit="{report}",
    description="weekly reports answered with a receipt, by outcome: accepted (stored now) or duplicate",
)
REFUSED = _meter.create_counter(
    "stats.ingest.refused",
    unit="{call}",
    description="submissions and deletions refused, by reason",
)
RATE_LIMITED = _meter.create_counter(
    "stats.ingest.rate_limited",
    unit="{call}",
    description="calls refused by a rate limit, by scope: peer (one address) or global (this process)",
)
DELETIONS = _meter.create_counter(
    "stats.ingest.deletions", unit="{installation}", description="installations deleted at their request"
)
DURATION = _meter.create_histogram(
    "stats.ingest.duration", unit="s", description="time to answer a call, by method"
)


class RollupLag:
    """stats.rollups.lag: seconds since the rollups last caught up with the
    reports, on `clock`. `caught_up_at` is when the last refresh (by this
    process or another replica) completed; until it is known, the server's
    start."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self.caught_up_at = clock()
        observe_gauge(
            _METER,
            "stats.rollups.lag",
            self.seconds,
            "seconds since the analytics' rollups last caught up with the stored reports",
            unit="s",
        )

    def seconds(self) -> float:
        return max(0.0, (self.clock() - self.caught_up_at).total_seconds())
