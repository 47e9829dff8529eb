"""Fixtures shared by the whole suite: client keys and real gateways."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import ClientKey, GatewayThread, base_config

MakeGateway = Callable[..., GatewayThread]


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    """One OpenSSH client key for the whole run."""
    return ClientKey.create(tmp_path_factory.mktemp("client-key"))


@pytest.fixture
def make_gateway(tmp_path: Path, client_key: ClientKey) -> Iterator[MakeGateway]:
    """Start gateways with config overrides; each is stopped at the end of the test."""
    started: list[GatewayThread] = []

    def make(overrides: dict[str, Any] | None = None) -> GatewayThread:
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        gateway = GatewayThread(base_config(directory, client_key, overrides), client_key)
        started.append(gateway)
        return gateway.start()

    yield make
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(make_gateway: MakeGateway) -> GatewayThread:
    """A gateway with the local backend and default settings."""
    return make_gateway()
