"""Fixtures for the lease tests: lease books on the session Redis, a fake provider, and helpers."""

from __future__ import annotations

import asyncio
import time

import pytest

from imagemesh.leases import LeaseBook
from tests.leases.fake_provider import FakeProvider

# Short times so the tests that wait for expiry stay short.
TTL, MARGIN, MJR = 1.0, 0.3, 3.0


@pytest.fixture
async def book_factory(redis):
    books: list[LeaseBook] = []

    async def make(holder: str | None = None, client=None, **kw) -> LeaseBook:
        kw = {"ttl": TTL, "margin": MARGIN, "max_job_runtime": MJR, "default_limit": 8, **kw}
        book = LeaseBook(client or redis, holder=holder or f"holder-{len(books)}", **kw)
        await book.start()
        books.append(book)
        return book

    yield make
    for book in books:
        await book.aclose()


@pytest.fixture
async def provider():
    fake = FakeProvider()
    await fake.start()
    yield fake
    await fake.stop()


async def eventually(check, timeout: float = 5.0, every: float = 0.005):
    """Await `check()` (an async predicate on Redis-side state) until true; fail after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)
