"""Fixtures for the compatibility tests: a ``stepline dev`` or ``stepline start`` server plus one official-SDK
app, started once per test class and mode (the tests keep apart by a unique ``token`` in their events' data).

A test class sets ``app`` to a zero-argument callable returning the :class:`AppSpec` to run; the ``stack`` fixture
runs it in both modes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_model import FakeModel
from .harness import MODES, Stack, running_stack


@pytest.fixture(scope="class", params=MODES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = request.cls.app()
    workdir = tmp_path_factory.mktemp(f"{spec.app_id}-{request.param}")
    with running_stack(spec, request.param, workdir) as s:
        yield s


@pytest.fixture
def model() -> Iterator[FakeModel]:
    """A fake OpenAI-compatible model (and step.fetch target) on a loopback port: see :mod:`.fake_model`."""
    fake = FakeModel()
    yield fake
    fake.close()
