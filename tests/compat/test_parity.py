"""Issue 14 ("Official Inngest SDKs, round 2") with the official SDKs, unmodified: PyPI ``inngest`` (0.5.x) served
by FastAPI (``py_app/parity_app.py``) and npm ``inngest`` (4.24.0) served by Express (``node_app/parity_app.js``),
against ``stepline dev`` and a signed ``stepline start``. The checks are in :mod:`.parity_suite`."""

from __future__ import annotations

import pytest

from .harness import AppSpec, node_app, python_app
from .parity_suite import ParitySuite

pytestmark = pytest.mark.compat


def _python_parity_app() -> AppSpec:
    return python_app("parity-py", "parity_app")


def _node_parity_app() -> AppSpec:
    return node_app("parity_app.js", "parity-node")


class TestPythonParity(ParitySuite):
    app = staticmethod(_python_parity_app)


class TestNodeParity(ParitySuite):
    app = staticmethod(_node_parity_app)
