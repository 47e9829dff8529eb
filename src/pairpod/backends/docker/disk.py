"""``docker.limits.disk``: a size cap on a container's writable layer, where the engine can.

Docker caps a container's writable layer (``StorageOpt: {"size": ...}``) only
with some storage drivers: ``overlay2`` on an xfs backing filesystem mounted
with ``pquota``, ``btrfs``, ``zfs``, ``devicemapper`` (and Windows). On any
other (``overlay2`` on ext4, ``fuse-overlayfs``, ``vfs``) the engine refuses
to create a container that asks for one. :class:`DiskLimit` asks the engine's
``/info`` once which driver it runs, adds the cap only where it can hold, and
says once in the log when it cannot (the limit then is the host's disk). A
refusal the driver check could not foresee (xfs without ``pquota``) is
caught on the first create: the container is created without the cap and
the cap is not asked for again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pairpod.backends.docker.api import Engine, EngineError
from pairpod.errors import PairpodError
from pairpod.log import fields, get_logger

log = get_logger("backend.docker")

# Drivers whose size option caps the writable layer; overlay2 only on xfs.
_SIZE_DRIVERS = frozenset({"btrfs", "zfs", "devicemapper", "windowsfilter"})


def driver_supports_size(info: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the engine described by ``/info`` can cap a writable layer, and its driver."""
    driver = str(info.get("Driver", ""))
    status = {str(pair[0]): str(pair[1]) for pair in info.get("DriverStatus") or [] if len(pair) == 2}
    backing = status.get("Backing Filesystem", "")
    described = f"{driver} on {backing}" if backing else driver
    if driver == "overlay2":
        return backing == "xfs", described
    return driver in _SIZE_DRIVERS, described


def _refuses_size(error: EngineError) -> bool:
    text = error.engine_message.lower()
    return "storage-opt" in text or "storage opt" in text or "storageopt" in text


class DiskLimit:
    """Adds ``StorageOpt`` to container-create bodies when the engine can enforce it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._supported: bool | None = None

    async def apply(self, config: dict[str, Any], disk: str | None) -> dict[str, Any]:
        """``config`` with the writable-layer cap ``disk`` added, if it can be enforced."""
        if disk is None:
            return config
        if self._supported is None:
            try:
                info = await self._engine.info()
            except PairpodError:
                return config  # the create that follows reports the engine down
            self._supported, driver = driver_supports_size(info)
            if not self._supported:
                self._unsupported(disk, f"storage driver {driver} cannot cap a container's size")
        if not self._supported:
            return config
        host = {**config["HostConfig"], "StorageOpt": {"size": disk}}
        return {**config, "HostConfig": host}

    async def create(self, name: str, config: dict[str, Any]) -> str:
        """Create the container; if the engine refuses the cap, without it (once and for all)."""
        try:
            return await self._engine.create_container(name, config)
        except EngineError as error:
            if "StorageOpt" not in config["HostConfig"] or not _refuses_size(error):
                raise
            self._supported = False
            self._unsupported(config["HostConfig"]["StorageOpt"]["size"], error.engine_message)
        host = {k: v for k, v in config["HostConfig"].items() if k != "StorageOpt"}
        return await self._engine.create_container(name, {**config, "HostConfig": host})

    @staticmethod
    def _unsupported(disk: str, reason: str) -> None:
        log.warning(
            "docker.disk_limit_unsupported",
            extra=fields(
                disk=disk,
                reason=reason,
                effect="docker.limits.disk is not enforced; containers may fill the engine's disk",
            ),
        )
