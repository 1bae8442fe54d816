"""Fixtures shared by the observability tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stepline.observability import disable, enable_metrics
from stepline.observability.metrics import Metrics


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """This process's metrics switched on for one test (and off again after it)."""
    disable()
    m = enable_metrics()
    try:
        yield m
    finally:
        disable()
