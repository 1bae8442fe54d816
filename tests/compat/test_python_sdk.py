"""The official PyPI ``inngest`` SDK (0.5.x), unmodified, served by FastAPI (``py_app/app.py``), against
``stepline dev`` and a signed ``stepline start``. The checks themselves are in :mod:`.sdk_suite`."""

from __future__ import annotations

import pytest

from .harness import python_app
from .sdk_suite import SdkSuite

pytestmark = pytest.mark.compat


class TestPythonSdk(SdkSuite):
    app = staticmethod(python_app)
