"""Small-group suppression: no group of fewer than k installations is published.

Groups smaller than k are folded into one "other" entry. An "other" entry
smaller than k would itself be a small group, so the smallest published groups
are folded into it until it reaches k; if even then it stays below k (the
whole population is below k), it is left out. Counts are never published as
minima or maxima.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    key: tuple[int, ...]
    installations: int
    amount: int = 0  # printers, errors...: summed along with the group


@dataclass(frozen=True)
class Folded:
    groups: list[Group]  # each of at least k installations, largest first
    other: Group | None  # at least k installations, or None


OTHER_KEY: tuple[int, ...] = ()


def fold_small_groups(groups: Iterable[Group], k: int) -> Folded:
    everything = list(groups)
    published = sorted(
        (g for g in everything if g.installations >= k), key=lambda g: (-g.installations, g.key)
    )
    small = [g for g in everything if g.installations < k]
    installations = sum(g.installations for g in small)
    amount = sum(g.amount for g in small)
    while 0 < installations < k and published:
        smallest = published.pop()
        installations += smallest.installations
        amount += smallest.amount
    other = Group(OTHER_KEY, installations, amount) if installations >= k else None
    return Folded(published, other)
