"""Three ``pairpod serve`` replicas sharing one real ``redis-server``: lockout and key cache.

The replicas run as real processes on loopback, with the real OpenSSH
client for key logins and AsyncSSH as the client for passwords (it binds a
chosen 127.0.0.x source address, so each test's address lockouts stay its
own). Redis is stopped and started again, and frozen (SIGSTOP: it accepts
and never answers), in the middle of the last tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml

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
                        "github_users": ["octo", "octo-rush", "octo-down", "octo-back", "octo-hang"],
                        "key_sources": {"github": {"url": peer.url, "ttl": "10m"}},
                        "lockout": {"failures": FAILURES, "window": "10m", "duration": "10m"},
                    },
                    "ssh": {"login_timeout": "20s", **NO_ADMISSION_LIMITS},
                    "shutdown_grace": "1s",
                    "log": {"level": "debug"},  # keys.shared_wait
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


def logins_through_each_replica_fetch_once(cluster: Cluster, login: str) -> None:
    """``login``'s key page is published; it logs in through A, B and C; the source was asked once."""
    cluster.keys.keys[login] = cluster.github_key.public_line
    for replica in cluster.replicas:
        assert key_login(replica, login, cluster.github_key) == "hello\n"
    assert cluster.keys.counts[login] == 1


def test_a_github_page_is_fetched_once_for_three_replicas(cluster: Cluster) -> None:
    logins_through_each_replica_fetch_once(cluster, "octo")


def test_three_replicas_asking_at_once_make_one_fetch(cluster: Cluster) -> None:
    cluster.keys.keys["octo-rush"] = cluster.github_key.public_line
    cluster.keys.modes["octo-rush"] = "slow"  # the first fetch hangs until released
    logins = [
        subprocess.Popen(
            replica.ssh_argv("echo", "hello", user="octo-rush", key=cluster.github_key),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for replica in cluster.replicas
    ]
    try:
        # One replica fetches; the two others wait for its answer rather than ask the source.
        wait_until(
            lambda: sum("keys.shared_wait" in r.log() for r in cluster.replicas) == 2,
            message="two replicas waiting for the third's fetch",
        )
        assert cluster.keys.counts["octo-rush"] == 1
        cluster.keys.release_from_thread()
        assert [login.communicate(timeout=30)[0] for login in logins] == [b"hello\n"] * 3
    finally:
        for login in logins:
            login.kill()
    assert cluster.keys.counts["octo-rush"] == 1


def test_redis_stopped_and_started_logins_keep_working_and_counts_resume(cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    cluster.keys.keys["octo-down"] = cluster.github_key.public_line
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
    logins_through_each_replica_fetch_once(cluster, "octo-back")


def test_a_redis_that_hangs_holds_no_login(cluster: Cluster) -> None:
    a, b, _ = cluster.replicas
    cluster.keys.keys["octo-hang"] = cluster.github_key.public_line
    downs = a.log().count("cluster.redis_down")
    ups = a.log().count("cluster.redis_up")
    assert cluster.redis.proc is not None
    cluster.redis.proc.send_signal(signal.SIGSTOP)  # connections open, no answers: a node lost
    try:
        # The first Redis command of this login waits its bound, then the replica works alone.
        assert key_login(a, "octo-hang", cluster.github_key) == "hello\n"
        assert a.log().count("cluster.redis_down") > downs
        assert asyncio.run(password_login(b, "fay", PASSWORD, "127.0.0.10"))
    finally:
        cluster.redis.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: a.log().count("cluster.redis_up") > ups, message="redis back")


def test_a_replicas_cluster_keys_come_from_its_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path / "pairpod.yaml", {"cluster": {"heartbeat": "2s"}})
    env = {
        **os.environ,
        "PAIRPOD_CLUSTER_REDIS": "redis://:redis-password@redis.internal:6379/0",
        "PAIRPOD_CLUSTER_ADVERTISE": "10.1.2.3:2223",
        "PAIRPOD_CLUSTER_SECRET": secrets.token_hex(16),
    }
    check = [sys.executable, "-m", "pairpod.cli", "check-config", str(path)]
    result = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cluster = yaml.safe_load(result.stdout)["cluster"]
    # (Its secrets hidden: the output gets pasted into tickets.)
    assert cluster == {**cluster, "redis": "redis://***@redis.internal:6379/0", "secret": "(hidden)"}
    assert (cluster["advertise"], cluster["heartbeat"]) == ("10.1.2.3:2223", "2s")
    assert env["PAIRPOD_CLUSTER_SECRET"] not in result.stdout
    # A replica whose Secret is missing is told what is missing, and where it may come from.
    del env["PAIRPOD_CLUSTER_SECRET"]
    result = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cluster.redis needs cluster.advertise and cluster.secret" in result.stderr
    assert "PAIRPOD_CLUSTER_SECRET" in result.stderr
