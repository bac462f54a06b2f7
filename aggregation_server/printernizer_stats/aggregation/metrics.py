"""The aggregation server's metrics (docs/operations.md says what each means).

Refusals, rate limits and durations are recorded at the servicer's boundary,
reports and deletions by the ingest domain once it answers them: they count
what callers were answered. No attribute holds an address or an
installation: only outcomes and reasons.
"""

from __future__ import annotations

from opentelemetry import metrics

_meter = metrics.get_meter("printernizer_stats.aggregation_server")

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
