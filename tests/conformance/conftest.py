"""The backend conformance suite: every SSH feature, through a real gateway, per backend.

Each backend registers a fixture named ``backend_<name>`` that returns the config
overrides selecting it (and prepares whatever it needs: an engine, images, an
API server). Add its name to ``CONFORMANCE_BACKENDS`` and every test in this
folder runs against it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import MakeGateway
from tests.support.gateway import GatewayThread

CONFORMANCE_BACKENDS = ["local"]


@pytest.fixture
def backend_local() -> dict[str, Any]:
    """The local backend needs nothing prepared."""
    return {"backend": "local"}


@pytest.fixture(params=CONFORMANCE_BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    return str(request.param)


@pytest.fixture
def backend_overrides(request: pytest.FixtureRequest, backend_name: str) -> dict[str, Any]:
    """Config overrides selecting the backend under test."""
    return dict(request.getfixturevalue("backend_" + backend_name.replace("-", "_")))


@pytest.fixture
def gw(make_gateway: MakeGateway, backend_overrides: dict[str, Any]) -> GatewayThread:
    """A gateway on the backend under test."""
    return make_gateway(backend_overrides)
