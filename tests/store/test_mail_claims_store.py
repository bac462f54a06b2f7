"""Claiming e-mail reports on real SQLite and PostgreSQL: one claim wins, a
released claim can be taken again, and the claims of different reports do not
meet."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from printernizer_stats.store.database import upgrade
from printernizer_stats.store.mail_claims_store import MailClaimsStore

from .. import databases
from ..aggregation.conftest import NOW

database_url = databases.database_url

WEEKLY, MONTHLY = 1, 2


@pytest.fixture
async def claims(database_url: str) -> AsyncIterator[MailClaimsStore]:
    upgrade(database_url)
    opened = MailClaimsStore.open(database_url)
    yield opened
    await opened.close()


async def test_a_report_is_claimed_once_until_released(claims: MailClaimsStore) -> None:
    assert await claims.claim(WEEKLY, 202646, NOW)
    assert not await claims.claim(WEEKLY, 202646, NOW)  # sent, or being sent, by another
    assert await claims.claim(WEEKLY, 202647, NOW)  # another week
    assert await claims.claim(MONTHLY, 202646, NOW)  # another kind, the same number
    await claims.release(WEEKLY, 202646)
    assert await claims.claim(WEEKLY, 202646, NOW)  # tried again after a failed send
    assert not await claims.claim(WEEKLY, 202647, NOW)  # the other claims stayed
    assert not await claims.claim(MONTHLY, 202646, NOW)
