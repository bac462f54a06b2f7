"""Claiming e-mail reports: the analytics server's one write.

Each report (a kind and a period) is claimed by inserting its row of
`email_reports` before it is sent: the primary key lets one claim win, so
several analytics replicas and restarts send a report once. A send that fails
releases its claim, to be tried again. The claims need a writable database (a
read replica's primary).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import schema
from .database import create_server_engine

_claims = schema.email_reports


class MailClaimsStore:
    """The e-mail report claims of the database at `engine`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> MailClaimsStore:
        return cls(create_server_engine(url))

    async def close(self) -> None:
        await self.engine.dispose()

    async def claim(self, kind: int, period: int, at: dt.datetime) -> bool:
        """Claim the report of `kind` for `period`; False when it is claimed
        already (sent, or being sent by another replica)."""
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(_claims).values(kind=kind, period=period, sent_at=at))
        except IntegrityError:
            return False
        return True

    async def release(self, kind: int, period: int) -> None:
        """Give a claim up (its report was not sent), so that it is tried again."""
        async with self.engine.begin() as connection:
            claim = delete(_claims).where(_claims.c.kind == kind, _claims.c.period == period)
            await connection.execute(claim)
