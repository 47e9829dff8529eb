"""docker.limits.disk: asked for only where the storage driver can hold it, dropped once refused."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from pairpod.backends.docker.api import Engine
from pairpod.backends.docker.disk import DiskLimit, driver_supports_size
from tests.support.docker_env import inspect, require_engine
from tests.support.images import busybox_image


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (
            {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]]},
            (False, "overlay2 on extfs"),
        ),
        ({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "xfs"]]}, (True, "overlay2 on xfs")),
        ({"Driver": "btrfs", "DriverStatus": []}, (True, "btrfs")),
        ({"Driver": "zfs"}, (True, "zfs")),
        ({"Driver": "vfs", "DriverStatus": None}, (False, "vfs")),
        ({"Driver": "fuse-overlayfs"}, (False, "fuse-overlayfs")),
    ],
)
def test_driver_supports_size(info: dict[str, Any], expected: tuple[bool, str]) -> None:
    assert driver_supports_size(info) == expected


class EngineClaimingXfs(Engine):
    """The real engine, except that /info says overlay2 on xfs (as one without pquota would)."""

    async def info(self) -> dict[str, Any]:
        return {**await super().info(), "Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "xfs"]]}


async def test_a_refused_disk_limit_is_dropped_once_and_for_all(caplog: pytest.LogCaptureFixture) -> None:
    require_engine()
    engine = EngineClaimingXfs(None)
    if driver_supports_size(await Engine.info(engine))[0]:
        pytest.skip("this engine can cap a container's size: nothing is refused")
    disk = DiskLimit(engine)
    body = {
        "Image": busybox_image(),
        "Cmd": ["true"],
        "Labels": {"pairpod.test": "disk"},
        "HostConfig": {"NetworkMode": "none"},
    }
    names = [f"pairpod-test-disk-{secrets.token_hex(4)}" for _ in range(2)]
    try:
        first = await disk.apply(body, "1g")
        assert first["HostConfig"]["StorageOpt"] == {"size": "1g"}  # the driver looked capable
        await disk.create(names[0], first)  # refused by the real engine, created without
        assert not inspect(names[0])["HostConfig"].get("StorageOpt")
        assert await disk.apply(body, "1g") == body  # not asked for again
        await disk.create(names[1], body)
        warnings = [r for r in caplog.records if r.getMessage() == "docker.disk_limit_unsupported"]
        assert len(warnings) == 1
    finally:
        for name in names:
            await engine.remove_container(name)
        await engine.close()
