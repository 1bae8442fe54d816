"""Storage conformance fixtures: every test in this folder runs once per selected backend.

Backends are registered and selected in ``tests/backends.py`` (``STEPLINE_TEST_BACKENDS``; default
``sqlite,postgres``). Tests only talk to the ``Store`` interface (``stepline.storage.base``).

Known bugs of one backend are marked on the test with ``@pytest.mark.known_bug("sqlite", reason=...)``:
for the named backends the test is a strict xfail (it must keep failing; once fixed, XPASS fails the run
and the marker has to go), for every other backend it is an ordinary test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from stepline.storage.base import Store

from ..backends import Backend, selected_backends


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "known_bug(*backends, reason): a known bug of these backends (strict xfail for them only)"
    )
    selected_backends()  # fail fast on a typo in STEPLINE_TEST_BACKENDS


@pytest.fixture(autouse=True)
def _known_bugs(request: pytest.FixtureRequest, backend: Backend) -> None:
    marker = request.node.get_closest_marker("known_bug")
    if marker is not None and backend.name in marker.args:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"KNOWN BUG: {marker.kwargs['reason']}"))


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store on a fresh, empty database of the backend under test."""
    async with backend.fresh(tmp_path) as s:
        yield s


@pytest.fixture
def reopen(backend: Backend) -> Callable[[Store], AbstractAsyncContextManager[Store]]:
    """``async with reopen(store) as other``: another opened Store on the same database (closed on exit)."""

    @asynccontextmanager
    async def _reopen(existing: Store) -> AsyncIterator[Store]:
        other = backend.same_database(existing)
        await other.open()
        try:
            yield other
        finally:
            await other.close()

    return _reopen
