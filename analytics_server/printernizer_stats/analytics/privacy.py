"""Disclosure control: what the analytics may publish (docs/privacy.md).

Two rules, applied to every figure every answer carries:

1. Suppression. No group of fewer than k installations is published.
   - Where each installation has exactly one value (deployment mode, versions,
     country, platform, architecture, fleet size, and pairs of these), the
     small groups are folded into one "other" group. "Other" then counts
     distinct installations (the groups are disjoint), and when it is itself
     below k the smallest published groups join it until it reaches k; if even
     then it stays below k (everyone together is below k), it is left out.
   - Where an installation can have several values (printer types, features,
     errors), the groups overlap: a sum of small groups could count one
     installation twice, so they are left out and no "other" is published.
   - A feature is published only when the installations that have it on, and
     those that have it off, each number 0 or at least k.
   - The installations of a group that shared a part of their report (consent
     levels: printers and features, usage, errors) are a group too: when they
     number fewer than k, they count as not having shared it. Neither their
     number nor anything summed over them (jobs, uptime, errors, features) is
     published; the group's figures of that part are as if none had shared it.

2. Rounding. After suppression, every count (installations, and the printers,
   errors and jobs summed over them) is rounded to the nearest multiple of k,
   and every share, rate and growth is computed from rounded counts. Any sum or
   difference of published counts is then again a multiple of k: no arithmetic
   over published figures, within one answer or across answers, can produce a
   count between 1 and k-1. Rounding is deterministic, so the same week gives
   the same figures in every answer and every window (no noise to average away).

Counts before rounding never leave this module's callers: `Disclosure` hands out
groups that are already rounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# A group is the analytics store's row (a key, its installations, its amount), as read.
from printernizer_stats.store.analytics_store import Group as Group

# k: the smallest group of installations ever published, unless configured.
DEFAULT_MIN_GROUP_SIZE = 5


@dataclass(frozen=True)
class Folded:
    groups: list[Group]  # published: each of at least k installations, largest first
    other: Group | None  # at least k distinct installations, or None
    hidden: frozenset[tuple[int, ...]]  # the keys of the groups folded into `other` (or left out)


OTHER_KEY: tuple[int, ...] = ()


def rounded(count: int, k: int) -> int:
    """`count` rounded to the nearest multiple of k (halves up)."""
    return k * ((2 * count + k) // (2 * k))


def ratio(part: int, whole: int) -> float:
    """part / whole, 0 when whole is 0 (both already rounded)."""
    return part / whole if whole else 0.0


def fold_small_groups(groups: Iterable[Group], k: int) -> Folded:
    """The published groups and "other" of a dimension where each installation
    has one value, with exact counts (Disclosure.fold rounds them)."""
    everything = list(groups)
    published = sorted(
        (g for g in everything if g.installations >= k), key=lambda g: (-g.installations, g.key)
    )
    small = [g for g in everything if g.installations < k]
    installations = sum(g.installations for g in small)
    amount = sum(g.amount for g in small)
    while 0 < installations < k and published:
        smallest = published.pop()
        small.append(smallest)
        installations += smallest.installations
        amount += smallest.amount
    other = Group(OTHER_KEY, installations, amount) if installations >= k else None
    return Folded(published, other, frozenset(g.key for g in small))


@dataclass(frozen=True)
class Disclosure:
    """Suppression and rounding with one k."""

    k: int

    def count(self, value: int) -> int:
        return rounded(value, self.k)

    def enough_shared(self, sharing: int, whole: int) -> bool:
        """Whether the `sharing` installations of a group of `whole` that shared a
        part may be published, with what they shared (rule 1): none, at least k,
        or the whole group (whose own count is published anyway)."""
        return sharing in (0, whole) or sharing >= self.k

    def _rounded(self, group: Group) -> Group:
        # Made directly rather than by dataclasses.replace: several times faster,
        # and the overview rounds thousands of groups.
        k = self.k
        return Group(group.key, rounded(group.installations, k), rounded(group.amount, k))

    def fold(self, groups: Iterable[Group]) -> Folded:
        """One-valued dimensions: small groups folded into "other"; all rounded."""
        folded = fold_small_groups(groups, self.k)
        return Folded(
            [self._rounded(g) for g in folded.groups],
            self._rounded(folded.other) if folded.other is not None else None,
            folded.hidden,
        )

    def drop_small(self, groups: Iterable[Group]) -> Folded:
        """Dimensions where an installation can have several values: small
        groups are left out, with no "other"; the rest rounded."""
        everything = list(groups)
        published = sorted(
            (g for g in everything if g.installations >= self.k), key=lambda g: (-g.installations, g.key)
        )
        hidden = frozenset(g.key for g in everything if g.installations < self.k)
        return Folded([self._rounded(g) for g in published], None, hidden)

    def features(self, groups: Iterable[Group]) -> Folded:
        """Feature states (installations: on; amount: reporting it at all): a
        feature is published when those with it on and those with it off each
        number 0 or at least k, and together at least k."""
        everything = list(groups)

        def publishable(g: Group) -> bool:
            off = g.amount - g.installations
            return g.amount >= self.k and all(n == 0 or n >= self.k for n in (g.installations, off))

        published = sorted(
            (g for g in everything if publishable(g)), key=lambda g: (-g.installations, -g.amount, g.key)
        )
        hidden = frozenset(g.key for g in everything if not publishable(g))
        return Folded([self._rounded(g) for g in published], None, hidden)
