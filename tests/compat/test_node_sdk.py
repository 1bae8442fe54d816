"""The official npm ``inngest`` SDK (4.24.0), unmodified, served by Express (``node_app/app.js``), against
``stepline dev`` and a signed ``stepline start``. The checks themselves are in :mod:`.sdk_suite`.

Needs ``npm ci --prefix tests/compat/node_app`` (``.ci/run`` does it): without ``node_modules`` these tests are
skipped locally and fail in CI (``$CI`` set)."""

from __future__ import annotations

import pytest

from .harness import AppSpec, node_app
from .sdk_suite import SdkSuite

pytestmark = pytest.mark.compat


def _node_feature_app() -> AppSpec:
    return node_app("app.js", "compat-node")


class TestNodeSdk(SdkSuite):
    app = staticmethod(_node_feature_app)
