"""The query parameters of the statistics API, and what each one means: a wrong one is
a 400 naming it, decided here before any backend is asked.

- A week (`week`, `until`) is written `2026-W46` and must be a real ISO week
  of the years the system knows (printernizer_stats.common.weeks.Week: 1900-9000). The
  backends read week 0 of year 0 as "not given", so `0000-W00` must never
  reach them.
- A count (`weeks`) is written in decimal digits only, and bounded.
- A parameter the endpoint does not have, or one given twice, is refused:
  silently ignoring it would answer a different question than the one asked.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from printernizer.stats.v1 import common_pb2
from printernizer_stats.common.weeks import parse_week
from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

from .errors import invalid

# What OpenAPI says a week looks like: years 1900-9000 (MIN_YEAR-MAX_YEAR),
# weeks 01-53, in ASCII digits (`\d` would also take other scripts' digits, and
# Python's int() reads "٢٠٢٦" as 2026). Whether week 53 exists in that year
# is for parse_week to say.
WEEK_PATTERN = r"^(19[0-9]{2}|[2-8][0-9]{3}|9000)-W(0[1-9]|[1-4][0-9]|5[0-3])$"
MAX_WEEKS = 104


def week_of(text: str | None) -> common_pb2.IsoWeek | None:
    """The week for a backend request; None (the backend's default) when not given."""
    return None if text is None else parse_week(text).to_proto()


def _real_week(text: str | None) -> str | None:
    if text is not None:
        try:
            parse_week(text)
        except ValueError as exc:
            raise PydanticCustomError("iso_week", str(exc)) from None
    return text


def _decimal(text: Any) -> Any:
    # Only digits (and a sign, so a negative count hears about its bound):
    # pydantic alone would also read "+5", " 5", "5.0" and "5_0" as 5.
    if isinstance(text, str) and not re.fullmatch(r"-?[0-9]+", text):
        raise PydanticCustomError("decimal", "must be a whole number in decimal digits")
    return text


WEEK_EXAMPLE = "2026-W46"
WEEK_SCHEMA: dict[str, Any] = {"pattern": WEEK_PATTERN}
Weeks = Annotated[
    int | None,
    Query(ge=1, le=MAX_WEEKS, description=f"weeks in the window (1-{MAX_WEEKS})"),
    BeforeValidator(_decimal),
]
# The pattern is documented only: parse_week checks the text, and says why it is not a week.
Until = Annotated[
    str | None,
    Query(description=f"the window's last week, e.g. {WEEK_EXAMPLE}", json_schema_extra=WEEK_SCHEMA),
    AfterValidator(_real_week),
]
WeekParam = Annotated[
    str | None,
    Query(description=f"the week, e.g. {WEEK_EXAMPLE}", json_schema_extra=WEEK_SCHEMA),
    AfterValidator(_real_week),
]


def _query_names(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


async def only_declared_parameters(request: Request) -> None:
    """Refuse a query parameter the endpoint does not declare, or one given
    more than once (a router dependency: it runs before the parameters are read)."""
    route: APIRoute = request.scope["route"]
    declared = _query_names(route.dependant)
    seen = set()
    for name, _ in request.query_params.multi_items():
        if not name:  # "?=x": nothing to name but the query itself
            raise invalid("query", "has a parameter without a name")
        if name not in declared:
            raise invalid(name, "is not a parameter of this endpoint")
        if name in seen:
            raise invalid(name, "is given more than once")
        seen.add(name)
