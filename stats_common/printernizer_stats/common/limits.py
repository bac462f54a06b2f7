"""The bounds more than one part applies, each defined here once: the SDK and
the agent check events with them, the agent builds reports within them, and
the aggregation server refuses what lies beyond them. (Weeks have theirs in
`weeks`: WEEK_HOURS, last_complete_week.)"""

from __future__ import annotations

import datetime as dt

# The most each part of a version (major, minor, patch) may be: an app's or
# Python's version beyond it is more likely broken or forged than real.
MAX_VERSION_PART = 10_000
# The most printers of one family an installation may report.
MAX_PRINTERS_PER_TYPE = 10_000

# How far ahead of the agent's clock a host's event may be dated: beyond it,
# the time is a clock or host bug, not usage.
HOST_CLOCK_SKEW = dt.timedelta(minutes=10)
# How far the agent's clock may be ahead of the aggregation server's: a report
# may arrive this long before its week has ended by the server's clock, and a
# deletion order be dated this far ahead of it.
AGENT_CLOCK_SKEW = dt.timedelta(hours=1)
