"""Three ``pairpod serve`` replicas sharing one real ``redis-server``: lockout and key cache.

The replicas run as real processes on loopback, with the real OpenSSH
client for key logins and AsyncSSH as the client for passwords (it binds a
chosen 127.0.0.x source address, so each test's address lockouts stay its
own). Redis is stopped and started again in the middle of the last test.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest

from tests.support.gateway import (
    NO_ADMISSION_LIMITS,
    ClientKey,
    GatewayProcess,
    wait_until,
    write_config,
)
from tests.support.http_peers import KeySourcePeer, served_in_thread
from tests.support.redis_server import RedisServer, free_port

PASSWORD = "correct horse battery"
FAILURES = 3  # the lockout's threshold in these replicas
USERS = ("carol", "erin", "fay")


class Cluster:
    """The three replicas, their Redis and their key source."""

    def __init__(
        self, replicas: list[GatewayProcess], redis: RedisServer, keys: KeySourcePeer, github_key: ClientKey
    ) -> None:
        self.replicas = replicas
        self.redis = redis
        self.keys = keys
        self.github_key = github_key


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[Cluster]:
    from pairpod.auth import hash_password

    tmp = tmp_path_factory.mktemp("cluster")
    github_key = ClientKey.create(tmp / "github-key")
    (tmp / "authorized_keys").write_text(client_key.public_line + "\n")
    password_hash = hash_password(PASSWORD)
    redis = RedisServer(tmp).start()
    replicas: list[GatewayProcess] = []
    with served_in_thread(KeySourcePeer()) as peer:
        assert isinstance(peer, KeySourcePeer)
        try:
            for name in "abc":
                config: dict[str, Any] = {
                    "listen": "127.0.0.1:0",
                    "instance_id": f"test-{name}-{secrets.token_hex(4)}",
                    "host_keys": [str(tmp / "host_key")],
                    "auth": {
                        "authorized_keys": str(tmp / "authorized_keys"),
                        "users": {user: {"password_hash": password_hash} for user in USERS},
                        "github_users": ["octo", "octo-down", "octo-back"],
                        "key_sources": {"github": {"url": peer.url, "ttl": "10m"}},
                        "lockout": {"failures": FAILURES, "window": "10m", "duration": "10m"},
                    },
                    "ssh": {"login_timeout": "20s", **NO_ADMISSION_LIMITS},
                    "shutdown_grace": "1s",
                    # A plain shell: the login shell's profile is no part of these tests.
                    "local": {"shell": ["/bin/sh"]},
                    "cluster": {
                        "redis": redis.url,
                        "advertise": f"127.0.0.1:{free_port()}",
                        "secret": secrets.token_hex(16),
                        "heartbeat": "0.5s",
                        "ttl": "2s",
                    },
                }
                path = write_config(tmp / f"replica-{name}.yaml", config)
                replicas.append(GatewayProcess(path, key=client_key).start())
            for replica in replicas:
                wait_until(lambda r=replica: "cluster.redis_up" in r.log(), message="replica joined redis")
            yield Cluster(replicas, redis, peer, github_key)
        finally:
            for replica in replicas:
                replica.kill()
            redis.stop()


async def password_login(replica: GatewayProcess, user: str, password: str, source: str) -> bool:
    """One password attempt from ``source`` (a 127.0.0.x address); whether it logged in."""
    try:
        async with asyncssh.connect(
            "127.0.0.1",
            replica.port,
            local_addr=(source, 0),
            username=user,
            password=password,
            client_keys=None,
            known_hosts=None,
            preferred_auth="password",
        ) as conn:
            result = await conn.run("echo logged-in", check=False)
            return result.stdout == "logged-in\n"
    except asyncssh.PermissionDenied:
        return False


def key_login(replica: GatewayProcess, user: str, key: ClientKey | None = None) -> str:
    """A key login with the real OpenSSH client; its output, or the failure."""
    result = replica.ssh("echo", "hello", user=user, key=key, timeout=30)
    return result.stdout.decode() if result.returncode == 0 else f"failed: {result.stderr.decode()}"


def heard_of_lock(replica: GatewayProcess, kind: str, subject: str) -> bool:
    return (
        re.search(rf"cluster\.lockout kind={kind} subject={re.escape(subject)}\b", replica.log()) is not None
    )


def test_failures_on_three_replicas_lock_the_user_on_every_replica(cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    # One wrong password through each replica: no replica alone saw enough to lock.
    for replica in (a, b, c):
        assert not asyncio.run(password_login(replica, "carol", "wrong", "127.0.0.2"))
    for replica in (a, b, c):
        wait_until(lambda r=replica: heard_of_lock(r, "username", "carol"), message="lock announced")
    # The right password is now refused through any replica, from any address.
    assert not asyncio.run(password_login(b, "carol", PASSWORD, "127.0.0.3"))
    assert re.search(r"auth\.reject .*addr=127\.0\.0\.3 .*user=carol source=lockout", b.log())
    # The address lock holds too: the key user, not guessable, is refused from there...
    assert not asyncio.run(password_login(a, "fay", PASSWORD, "127.0.0.2"))
    # ...and other users from other addresses still log in.
    assert asyncio.run(password_login(c, "fay", PASSWORD, "127.0.0.4"))
    assert key_login(a, "anyone") == "hello\n"


def test_a_github_page_is_fetched_once_for_three_replicas(cluster: Cluster) -> None:
    cluster.keys.keys["octo"] = cluster.github_key.public_line
    for replica in cluster.replicas:
        assert key_login(replica, "octo", cluster.github_key) == "hello\n"
    assert cluster.keys.counts["octo"] == 1


def test_redis_stopped_and_started_logins_keep_working_and_counts_resume(cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    cluster.keys.keys["octo-down"] = cluster.github_key.public_line
    cluster.keys.keys["octo-back"] = cluster.github_key.public_line
    cluster.redis.stop()
    for replica in cluster.replicas:
        wait_until(lambda r=replica: "cluster.redis_down" in r.log(), message="replica saw redis down")

    # Logins keep working on every replica: keys, GitHub keys (fetched locally), passwords.
    for replica in cluster.replicas:
        assert key_login(replica, "anyone") == "hello\n"
        assert key_login(replica, "octo-down", cluster.github_key) == "hello\n"
    assert asyncio.run(password_login(b, "fay", PASSWORD, "127.0.0.5"))
    # Failures while Redis is away are counted on their replica (not enough to lock it)...
    for _ in range(FAILURES - 1):
        assert not asyncio.run(password_login(a, "erin", "wrong", "127.0.0.6"))
    assert asyncio.run(password_login(c, "erin", PASSWORD, "127.0.0.7"))

    ups = [replica.log().count("cluster.redis_up") for replica in cluster.replicas]
    cluster.redis.start()
    for replica, before in zip(cluster.replicas, ups, strict=True):
        wait_until(lambda r=replica, n=before: r.log().count("cluster.redis_up") > n, message="redis back")

    # ...and reach Redis when it is back: one more failure anywhere locks erin everywhere.
    assert not asyncio.run(password_login(b, "erin", "wrong", "127.0.0.8"))
    wait_until(lambda: heard_of_lock(c, "username", "erin"), message="lock announced")
    assert not asyncio.run(password_login(c, "erin", PASSWORD, "127.0.0.9"))

    # The key cache is shared again: a new page is fetched once for the three.
    for replica in cluster.replicas:
        assert key_login(replica, "octo-back", cluster.github_key) == "hello\n"
    assert cluster.keys.counts["octo-back"] == 1
