"""What a Docker container of pairpod's is: its create body's parts, names and limits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pairpod.backends.container import names
from pairpod.config import DockerSettings
from pairpod.errors import BackendError, StartTimeout

# --- constants -----------------------------------------------------------------------

# The Engine holds back a typed byte that starts its detach sequence until the
# next one arrives (and the default, Ctrl-P Ctrl-Q, would delay every Ctrl-P).
# So the sequence starts with Ctrl-\, the byte least used alone in practice, and
# is long enough never to be typed by accident.
DETACH_KEYS = "ctrl-\\,ctrl-@,ctrl-^,ctrl-_,ctrl-\\,ctrl-@,ctrl-^,ctrl-_"


def memory_bytes(size: str) -> int:
    """``512m`` -> bytes (1024-based, like docker)."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", size.lower())
    if match is None:
        raise BackendError(f"docker.limits.memory: bad size {size!r}")
    scale = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]
    return int(match.group(1)) * scale


def hostname_for(template: str, username: str) -> str:
    """The container hostname: the template filled in, made a valid host label."""
    return names.hostname_for(template, username, "docker.hostname")


def volume_name_for(template: str, username: str) -> str:
    """A per-user named volume, e.g. ``pairpod-home-alice``."""
    try:
        text = template.format(username=username)
    except (KeyError, IndexError, ValueError) as error:
        raise BackendError(f"docker.home_volume: bad template {template!r}: {error}") from None
    name = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")
    if not name:
        raise BackendError(f"docker.home_volume: {template!r} gives an empty name")
    return name


def home_mount_target(settings: DockerSettings) -> str:
    """Where the home volume goes: the workdir if set, else the user's usual home."""
    if settings.workdir:
        return settings.workdir
    user = (settings.user or "root").split(":", 1)[0]
    return "/root" if user in ("root", "0") else f"/home/{user}"


class Steps:
    """Which step of preparing an environment is under way (for timeout messages)."""

    def __init__(self, first: str) -> None:
        self.now = first

    def timeout_error(self, settings: DockerSettings) -> StartTimeout:
        """The error for a start that ran out of time during the current step."""
        return StartTimeout(
            f"{self.now} ({settings.image}) took longer than docker.timeouts.start "
            f"({settings.timeouts.start}s)"
        )


def container_config(
    settings: DockerSettings,
    *,
    cmd: list[str],
    labels: Mapping[str, str],
    hostname: str,
    env: Mapping[str, str],
    username: str | None,
    session: bool = False,
    tty: bool = False,
) -> dict[str, Any]:
    """The Engine's container-create body for these settings (the image's entrypoint is skipped)."""
    security = settings.security
    limits = settings.limits
    host: dict[str, Any] = {
        "NetworkMode": settings.network,
        "CapDrop": list(security.cap_drop),
        "CapAdd": list(security.cap_add),
        "SecurityOpt": ["no-new-privileges:true"] if security.no_new_privileges else [],
        "ReadonlyRootfs": security.read_only_rootfs,
        # In session mode the program itself is the main process: an init
        # as PID 1 forwards signals to it and reaps what it leaves behind.
        "Init": session,
        "RestartPolicy": {"Name": "no"},
    }
    if limits.memory is not None:
        host["Memory"] = memory_bytes(limits.memory)
        host["MemorySwap"] = host["Memory"]  # no swap on top
    if limits.cpus is not None:
        host["NanoCpus"] = int(limits.cpus * 1e9)
    if limits.pids is not None:
        host["PidsLimit"] = limits.pids
    if limits.tmp is not None:
        # Scratch space in memory (charged to the memory limit), never on the
        # host's disk; also somewhere to write with a read-only root.
        host["Tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={limits.tmp}"}
    # The log of the main process: the program itself in session mode.
    logs = settings.logs
    host["LogConfig"] = (
        {"Type": "none", "Config": {}}
        if logs.driver == "none"
        else {"Type": logs.driver, "Config": {"max-size": logs.max_size, "max-file": str(logs.max_files)}}
    )
    if settings.home_volume and username is not None:
        host["Mounts"] = [
            {
                "Type": "volume",
                "Source": volume_name_for(settings.home_volume, username),
                "Target": home_mount_target(settings),
            }
        ]
    config: dict[str, Any] = {
        "Image": settings.image,
        "Cmd": cmd,
        "Entrypoint": [],  # the image's entrypoint would wrap our command
        "Labels": dict(labels),
        "Hostname": hostname,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Tty": tty,
        # Connection mode: the idle command may block on stdin, kept open.
        # Session mode: stdin is the program's, closed once the client's ends.
        "OpenStdin": True,
        "StdinOnce": session,
        "AttachStdin": session,
        "AttachStdout": session,
        "AttachStderr": session,
        "HostConfig": host,
    }
    if settings.user:
        config["User"] = settings.user
    if settings.workdir:
        config["WorkingDir"] = settings.workdir
    return config
