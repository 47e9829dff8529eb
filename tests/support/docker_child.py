"""A stand-in gateway process for crash tests: opens environments, then waits to be killed.

Run as ``python -m tests.support.docker_child INSTANCE_ID CONNECTIONS CONFIG_JSON``.
It prints ``READY <container names>`` once every environment is up (and the warm
pool, if configured, is full), then blocks until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from pairpod.backends.docker import DockerBackend
from pairpod.config import validate_config
from tests.support.docker_backend import eventually
from tests.support.identity import identity


async def main(instance_id: str, connections: int, config_json: str) -> None:
    config = validate_config(json.loads(config_json), "child config")
    backend = DockerBackend(config, instance_id)
    await backend.start()
    envs = await asyncio.gather(
        *(backend.open(identity(config, user=f"user{n}")) for n in range(connections))
    )
    await eventually(lambda: backend.pool_size() >= config.docker.warm_pool, "a full pool", 120)
    names = [env.name for env in envs]  # type: ignore[attr-defined]
    print("READY", " ".join(sorted(names)), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
