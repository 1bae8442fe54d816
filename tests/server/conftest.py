"""Fixtures of the server tests: a fake app on a real socket and a factory for the real server around it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stepline import FakeClock, Stepline

from .fake_app import FakeApp, MakeStack, stack_factory


@pytest.fixture
async def app() -> AsyncIterator[FakeApp]:
    fake = FakeApp()
    yield fake
    await fake.astop()


@pytest.fixture
async def make_stack(client: Stepline, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> AsyncIterator[MakeStack]:
    async with stack_factory(client, clock, caplog) as make:
        yield make
