"""Three ``pairpod serve`` replicas sharing one real ``redis-server``: lockout and key cache.

The replicas run as real processes on loopback, with the real OpenSSH
client for key logins and AsyncSSH as the client for passwords (it binds a
chosen 127.0.0.x source address, so each test's address lockouts stay its
own). Redis is stopped and started again, and frozen (SIGSTOP: it accepts
and never answers), in the middle of the last tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
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
from tests.support.http_client import scrape
from tests.support.http_peers import KeySourcePeer, served_in_thread
from tests.support.redis_server import RedisServer, free_port

PASSWORD = "correct horse battery"
FAILURES = 3  # the lockout's threshold in these replicas
USERS = ("carol", "erin", "fay")
KEY_TIMEOUT = 10.0  # the key source's timeout: what a replica waiting for another's fetch may wait


class Cluster:
    """The three replicas, their Redis and their key source."""

    def __init__(
        self,
        replicas: list[GatewayProcess],
        redis: RedisServer,
        keys: KeySourcePeer,
        github_key: ClientKey,
        metrics_url: str,
    ) -> None:
        self.replicas = replicas
        self.redis = redis
        self.keys = keys
        self.github_key = github_key
        #: Replica A's ``/metrics`` (the only one with an admin listener).
        self.metrics_url = metrics_url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[Cluster]:
    from pairpod.auth import hash_password

    tmp = tmp_path_factory.mktemp("cluster")
    github_key = ClientKey.create(tmp / "github-key")
    (tmp / "authorized_keys").write_text(client_key.public_line + "\n")
    password_hash = hash_password(PASSWORD)
    redis = RedisServer(tmp).start()
    replicas: list[GatewayProcess] = []
    admin = f"127.0.0.1:{free_port()}"
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
                        "github_users": [
                            *("octo", "octo-rush", "octo-down", "octo-back", "octo-hang"),
                            *("octo-fail", "octo-stale", "octo-cancel"),
                        ],
                        "key_sources": {
                            "github": {"url": peer.url, "ttl": "10m", "timeout": f"{KEY_TIMEOUT:g}s"}
                        },
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
                if name == "a":
                    config["admin"] = {"listen": admin}
                path = write_config(tmp / f"replica-{name}.yaml", config)
                replicas.append(GatewayProcess(path, key=client_key).start())
            for replica in replicas:
                wait_until(lambda r=replica: "cluster.redis_up" in r.log(), message="replica joined redis")
            yield Cluster(replicas, redis, peer, github_key, f"http://{admin}/metrics")
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


def start_key_login(replica: GatewayProcess, user: str, key: ClientKey) -> subprocess.Popen[bytes]:
    """A key login with the real OpenSSH client, left running (``login_outcome`` ends it)."""
    return subprocess.Popen(
        replica.ssh_argv("echo", "hello", user=user, key=key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


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
    logins = [start_key_login(replica, "octo-rush", cluster.github_key) for replica in cluster.replicas]
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


def login_outcome(login: subprocess.Popen[bytes]) -> str:
    """What a key login started with ``ssh_argv`` ended with (as ``key_login`` tells it)."""
    out, err = login.communicate(timeout=30)
    return out.decode() if login.returncode == 0 else f"failed: {err.decode()}"


def logins_while_the_first_fetch_fails(cluster: Cluster, login: str) -> tuple[str, str, float]:
    """``login`` through A, whose fetch hangs then fails, and through B, waiting for A's fetch.

    Returns A's and B's outcomes and how long B took once A's fetch had failed.
    """
    a, b, _ = cluster.replicas
    fetches = cluster.keys.counts[login]
    cluster.keys.modes[login] = "slow_500"
    cluster.keys.hold_from_thread()
    first = start_key_login(a, login, cluster.github_key)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: cluster.keys.counts[login] == fetches + 1, message="A fetching")
        second = start_key_login(b, login, cluster.github_key)
        wait_until(
            lambda: re.search(rf"keys\.shared_wait key=\S+:{re.escape(login)} ", b.log()) is not None,
            message="B waiting for A's fetch",
        )
        cluster.keys.release_from_thread()  # A's fetch fails now
        failed = time.monotonic()
        second_outcome = login_outcome(second)
        waited = time.monotonic() - failed
        first_outcome = login_outcome(first)
    finally:
        cluster.keys.release_from_thread()
        for process in (first, second):
            if process is not None:
                process.kill()
    # B did not wait for a page that would never come: it asked the source itself.
    assert cluster.keys.counts[login] == fetches + 2
    return first_outcome, second_outcome, waited


def test_a_failed_fetch_lets_the_waiting_replica_try_at_once_and_deny(cluster: Cluster) -> None:
    cluster.keys.keys["octo-fail"] = cluster.github_key.public_line
    first, second, waited = logins_while_the_first_fetch_fails(cluster, "octo-fail")
    # No page anywhere: both are refused, as a single replica refuses on a failing source...
    assert first.startswith("failed: ") and "Permission denied" in first
    assert second.startswith("failed: ") and "Permission denied" in second
    # ...and B's refusal did not wait out the source's timeout.
    assert waited < KEY_TIMEOUT / 2


def test_a_failed_fetch_lets_the_waiting_replica_use_the_stale_page(cluster: Cluster) -> None:
    _, _, c = cluster.replicas
    cluster.keys.keys["octo-stale"] = cluster.github_key.public_line
    assert key_login(c, "octo-stale", cluster.github_key) == "hello\n"
    # The shared page is now older than the ttl (10m): stale, the fallback of a failing source.
    page = "pairpod:keys:github:octo-stale"
    assert cluster.redis.cli("HINCRBY", page, "at", str(-11 * 60 * 1000))
    first, second, waited = logins_while_the_first_fetch_fails(cluster, "octo-stale")
    assert (first, second) == ("hello\n", "hello\n")
    assert waited < KEY_TIMEOUT / 2
    assert re.search(r"keys\.stale .*login=octo-stale", cluster.replicas[1].log())


async def test_a_cancelled_fetch_lets_the_waiting_replica_try_at_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Two key caches on the cluster's Redis, in this process; A's fetch is cancelled (A stops)."""
    from pairpod.auth.remote_keys import RemoteKeySource
    from pairpod.cluster import ClusterStore, RedisKeyCache
    from pairpod.config import ClusterSettings, KeySourceSettings

    caplog.set_level(logging.DEBUG, logger="pairpod.cluster.keycache")
    login = "octo-cancel"
    cluster.keys.keys[login] = cluster.github_key.public_line
    cluster.keys.modes[login] = "slow"
    cluster.keys.hold_from_thread()
    settings = KeySourceSettings(url=cluster.keys.url, ttl=600, timeout=KEY_TIMEOUT)
    # (advertise and secret: required with redis, unused by a store alone)
    cluster_settings = ClusterSettings(
        redis=cluster.redis.url, advertise=f"127.0.0.1:{free_port()}", secret=secrets.token_hex(16)
    )
    stores = [ClusterStore(cluster_settings) for _ in "ab"]
    async with aiohttp.ClientSession() as http:
        a, b = (RemoteKeySource("github", settings, lambda: http, shared=RedisKeyCache(s)) for s in stores)
        try:
            for store in stores:
                await store.start()
            await asyncio.to_thread(wait_until, lambda: all(s.up for s in stores), message="on redis")
            first = asyncio.ensure_future(a.lookup(login))
            await asyncio.to_thread(wait_until, lambda: cluster.keys.counts[login] == 1, message="A fetching")
            second = asyncio.ensure_future(b.lookup(login))
            await asyncio.to_thread(
                wait_until,
                lambda: any(r.message == "keys.shared_wait" for r in caplog.records),
                message="B waiting for A's fetch",
            )
            await a.aclose()  # A's fetch is cancelled, and its claim given up
            with pytest.raises(asyncio.CancelledError):
                await first
            # B asks the source itself well before the source's timeout.
            await asyncio.to_thread(
                wait_until,
                lambda: cluster.keys.counts[login] == 2,
                timeout=KEY_TIMEOUT / 2,
                message="B asking the source itself",
            )
            cluster.keys.release_from_thread()
            found = await asyncio.wait_for(second, 30)
            assert (found.status, len(found.entries)) == ("fresh", 1)
        finally:
            cluster.keys.release_from_thread()
            for source in (a, b):
                await source.aclose()
            for store in stores:
                await store.aclose()


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


def test_the_redis_up_gauge_reads_0_while_redis_is_stopped_and_1_when_it_is_back(cluster: Cluster) -> None:
    def gauge() -> float | None:
        return scrape(cluster.metrics_url).get(("pairpod_cluster_redis_up", ()))

    wait_until(lambda: gauge() == 1, message="gauge reads redis up")
    cluster.redis.stop()
    try:
        wait_until(lambda: gauge() == 0, message="gauge reads redis down")
    finally:
        cluster.redis.start()
    wait_until(lambda: gauge() == 1, message="gauge reads redis back")


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
