"""Countries from IANA time zones, using the tz database's own tables.

The country of an installation is derived on the device from its configured
time zone, never from an IP address. The mapping is the tz database's
`zone.tab` (every zone a country uses), with the database's links
(`Europe/Kiev` -> `Europe/Kyiv`) resolved through `tzdata.zi`; names come from
its `iso3166.tab`. All three ship in the `tzdata` package, so the table is the
full, maintained one and needs no network.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import tzdata
from printernizer.stats.v1 import country_pb2

_ZONEINFO = Path(tzdata.__file__).parent / "zoneinfo"


def _table(name: str) -> list[list[str]]:
    lines = (_ZONEINFO / name).read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]


@cache
def _zone_to_alpha2() -> dict[str, str]:
    zones = {columns[2]: columns[0] for columns in _table("zone.tab")}
    # Links (old or alternative names) map to the country of their target,
    # unless zone.tab names the link itself (Europe/Vaduz is Liechtenstein's).
    for line in (_ZONEINFO / "tzdata.zi").read_text(encoding="utf-8").splitlines():
        if line.startswith("L "):
            _, target, alias = line.split()
            if alias not in zones and target in zones:
                zones[alias] = zones[target]
    return zones


@cache
def _names() -> dict[str, str]:
    return {columns[0]: columns[1] for columns in _table("iso3166.tab")}


def country_for_timezone(zone: str) -> int:
    """The Country enum value for an IANA zone; COUNTRY_UNSPECIFIED when the
    zone has no country (UTC, Etc/GMT+1) or is unknown."""
    alpha2 = _zone_to_alpha2().get(zone.strip().lstrip(":"))
    if alpha2 is None:
        return country_pb2.COUNTRY_UNSPECIFIED
    return country_pb2.Country.Value(f"COUNTRY_{alpha2}")


def alpha2(country: int) -> str:
    """ "DE" for COUNTRY_DE; "" for COUNTRY_UNSPECIFIED or an unknown number."""
    if country not in country_pb2.Country.DESCRIPTOR.values_by_number or not country:
        return ""
    return country_pb2.Country.Name(country_pb2.Country.ValueType(country)).removeprefix("COUNTRY_")


def country_name(country: int) -> str:
    """The English short name ("Germany"); "Unknown" when there is none."""
    return _names().get(alpha2(country), "Unknown")


def system_timezone() -> str:
    """The IANA name of this machine's time zone, or "" when it cannot be told.

    Looks at $TZ, then /etc/timezone (Debian, Home Assistant OS), then the
    target of the /etc/localtime symlink.
    """
    tz = os.environ.get("TZ", "").strip().lstrip(":")
    if tz and "/" in tz and not tz.startswith("/"):
        return tz
    try:
        name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
        if name:
            return name
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return ""
    marker = "zoneinfo/"
    return target[target.index(marker) + len(marker) :] if marker in target else ""
