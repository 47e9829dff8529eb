"""Three real ``pairpod serve`` replicas and a real redis-server: joins from any replica.

The owner shares a shell on replica A; joiners come in through B and C with
the real OpenSSH client in tmux, or as web pages (aiohttp WebSockets on B's
and C's web listeners), and see and type as if they were on A. The tests run
in order on one cluster (each step builds on the last, and the last kills A).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pairpod.replicas.joining import REPLICA_LOST
from pairpod.replicas.wire import CLIENT_HELLO_SIZE, ClientHandshake, cluster_key
from pairpod.sharing.joinable import ClusterUnavailable
from tests.support.gateway import ClientKey, GatewayProcess, Tmux, base_config, wait_until, write_config
from tests.support.redis_server import RedisServer
from tests.support.sshd import free_port
from tests.support.web import share_options, web_links
from tests.test_sharing_ssh import SHARE, Terminals, links
from tests.test_web_http import messages_until, origin_of

SECRET = "a-cluster-secret-for-tests-only"
HEARTBEAT, TTL = 1.0, 3.0


def stored(redis: RedisServer, pattern: str) -> list[str]:
    """The store's keys matching ``pattern``."""
    return sorted(filter(None, redis.cli("--raw", "KEYS", pattern).splitlines()))


class Replica(GatewayProcess):
    """One ``pairpod serve`` of the cluster, its replica listener's and its web listener's ports."""

    peer_port: int
    web_port: int

    def page(self, url: str) -> str:
        """A web link's page (printed with another replica's address) on this replica's web listener."""
        return f"http://127.0.0.1:{self.web_port}/s/{url.rsplit('/s/', 1)[1]}"


class Cluster:
    """The redis-server, the replicas A, B and C, and the terminals of the tests."""

    def __init__(self, tmp: Path, key: ClientKey) -> None:
        self.redis = RedisServer(tmp).start()
        self.terms = Terminals(tmp)
        self.joiners: dict[str, Tmux] = {}
        #: The owner's web links, as printed on A (see the ``owner`` fixture).
        self.web: dict[str, str] = {}
        # Started side by side: each spends most of its start-up importing.
        with ThreadPoolExecutor(3) as pool:
            started = pool.map(lambda name: self._replica(tmp / name, key), "ABC")
            self.replicas = dict(zip("ABC", started, strict=True))

    def _replica(self, directory: Path, key: ClientKey) -> Replica:
        directory.mkdir()
        port, web_port = free_port(), free_port()
        overrides: dict[str, Any] = {
            # C's shared sessions admit only the people named (A's: anyone with a link).
            "sharing": {"open": directory.name != "C", "web": {"listen": f"127.0.0.1:{web_port}"}},
            # A login shell's start-up files are not what is tested here.
            "local": {"shell": ["/bin/bash", "--noprofile", "--norc"]},
            "cluster": {
                "redis": self.redis.url,
                "advertise": f"127.0.0.1:{port}",
                "listen": f"127.0.0.1:{port}",
                "secret": SECRET,
                "heartbeat": HEARTBEAT,
                "ttl": TTL,
            },
        }
        config = base_config(directory, key, overrides).model_dump(mode="json")
        replica = Replica(write_config(directory / "pairpod.yaml", config), key=key)
        replica.peer_port, replica.web_port = port, web_port
        return replica.start()

    def join(self, name: str, via: str, link: str) -> Tmux:
        """A joiner in a terminal of its own, through replica ``via``."""
        term = self.joiners[name] = self.terms.start(
            name, self.replicas[via].ssh_argv(user=link, options=["-tt"])
        )
        return term

    def control(self, via: str, *command: str) -> str:
        """``alice+ctl`` through replica ``via``."""
        result = self.replicas[via].ssh(*command, user="alice+ctl")
        assert result.returncode == 0, result.stderr
        return result.stdout.decode()

    def close(self) -> None:
        self.terms.close()
        for replica in self.replicas.values():
            replica.kill()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cluster"), client_key)
    yield made
    made.close()


@pytest.fixture(scope="module")
def owner(cluster: Cluster) -> tuple[Tmux, str, str]:
    """The owner's shared shell on A, with something on screen already; its two SSH links.

    It has a read-only and a read-write web link as well (:func:`web`)."""
    term = cluster.terms.start("owner", cluster.replicas["A"].ssh_argv(options=share_options("rw")))
    ro, rw = links(term)
    cluster.web = web_links(term)  # read now: the joiners' screens may draw over the notice later
    term.type("echo before-$((6*7))\n")
    term.wait_for("before-42")
    return term, ro, rw


@pytest.fixture(scope="module")
def web(cluster: Cluster, owner: tuple[Tmux, str, str]) -> dict[str, str]:
    """The owner's web links, as printed on A: ``{"ro": URL, "rw": URL}``."""
    return cluster.web


async def open_page(
    http: aiohttp.ClientSession, url: str, attempts: int = 1
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """A web link's terminal stream and its first message (tried again while it says the
    other replicas cannot be reached: a replica learns that the store is back within its
    own retry interval, and a person would try again)."""
    for _ in range(attempts):
        socket = await http.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)})
        first = json.loads((await socket.receive(timeout=20)).data)
        if first.get("reason") != ClusterUnavailable.user_message:
            break
        await socket.close()
    return socket, first


def fetch(url: str) -> tuple[int, str]:
    """A page's status and text."""
    try:
        with urllib.request.urlopen(url, timeout=20) as answer:  # noqa: S310 - a loopback http URL
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _peer_says(port: int, hello: bytes) -> bytes:
    """Everything the replica listener sends back for ``hello``, until it hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(hello)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
            if len(received) >= 64:
                break
        return received


def test_the_replica_listener_answers_only_replicas(cluster: Cluster) -> None:
    port = cluster.replicas["B"].peer_port
    assert _peer_says(port, b"SSH-2.0-OpenSSH_9.2\r\n".ljust(CLIENT_HELLO_SIZE, b"x")) == b""
    assert _peer_says(port, ClientHandshake(cluster_key("not-the-cluster-secret")).hello()) == b""
    # The same exchange with the secret is answered (the listener is there and speaking).
    assert len(_peer_says(port, ClientHandshake(cluster_key(SECRET)).hello())) == 64


def test_joiners_through_other_replicas_see_and_type_as_on_the_owners(
    cluster: Cluster, owner: tuple[Tmux, str, str]
) -> None:
    term, ro, rw = owner
    viewer = cluster.join("ro-on-b", "B", ro)
    viewer.wait_for("before-42")  # the late joiner's first screen
    writer = cluster.join("rw-on-c", "C", rw)
    writer.wait_for("before-42")
    term.wait_for("joined")  # the owner is told, as for a joiner on A
    viewer.type("echo ro-$((5+5))\r")
    viewer.wait_for("read-only: your keystrokes are not sent")
    writer.type("echo from-c-$((100+1))\r")
    for screen in (term, viewer, writer):
        screen.wait_for("from-c-101")
    assert "ro-10" not in term.screen()
    listing = cluster.control("B", "list")  # +ctl on a replica without the session
    assert re.search(r"participant \d+\s+guest@127\.0\.0\.1\s+read-only", listing), listing
    assert re.search(r"participant \d+\s+guest@127\.0\.0\.1\s+read-write", listing), listing


def test_kick_through_another_replica(cluster: Cluster, owner: tuple[Tmux, str, str]) -> None:
    listing = cluster.control("B", "list")
    kicked = re.search(r"participant (\d+)\s+guest@127\.0\.0\.1\s+read-write", listing)
    assert kicked is not None, listing
    assert f"participant {kicked.group(1)} removed" in cluster.control("B", "kick", kicked.group(1))
    cluster.joiners["rw-on-c"].wait_for("removed from the session by its owner")
    assert not re.search(r"participant \d+\s+\S+\s+read-write", cluster.control("C", "list"))


async def test_web_joiners_through_other_replicas(
    cluster: Cluster, owner: tuple[Tmux, str, str], web: dict[str, str]
) -> None:
    term = owner[0]
    b, c = cluster.replicas["B"], cluster.replicas["C"]
    async with aiohttp.ClientSession() as http:
        viewer, hello = await open_page(http, b.page(web["ro"]))
        # The page's hello (who shares, the PTY's size) comes from A through B.
        assert hello == {**hello, "type": "hello", "owner": "user:alice", "access": "read-only", "cols": 100}
        await messages_until(viewer, b"before-42")  # the current screen
        await viewer.send_bytes(b"echo ro-web-$((2+2))\r")
        await messages_until(viewer, "read-only: your keystrokes are not sent")
        writer, _ = await open_page(http, c.page(web["rw"]))
        term.wait_for(r"web viewer joined \(read-write\)")
        # A read-write page's size counts on A; the page on B is told A's new size.
        await writer.send_str('{"type": "resize", "cols": 70, "rows": 20}')
        await writer.send_bytes(b"echo web-c-$(stty size | tr ' ' x)\r")
        term.wait_for("web-c-20x70")
        await messages_until(viewer, '"type": "size", "cols": 70, "rows": 20')
        await messages_until(viewer, b"web-c-20x70")
        assert "ro-web-4" not in term.screen()
        kicked = re.search(r"participant (\d+)\s+web viewer\s+read-write", cluster.control("B", "list"))
        assert kicked is not None
        cluster.control("B", "kick", kicked.group(1))
        ended = await messages_until(writer, '"type": "end"')
        assert "removed from the session by its owner" in str(ended[-1])
        await writer.close()
        await viewer.close()
    # Both pages have left A's Terminal; the owner's window sizes it again.
    wait_until(lambda: "web viewer" not in cluster.control("A", "list"), message="web viewers gone")


def test_store_down_and_back(cluster: Cluster, owner: tuple[Tmux, str, str], web: dict[str, str]) -> None:
    term, ro, rw = owner
    viewer = cluster.joiners["ro-on-b"]  # joined before the store went down
    cluster.redis.stop()
    refused = cluster.replicas["C"].ssh(user=rw, options=["-tt", "-o", "LogLevel=INFO"])
    assert refused.returncode != 0
    assert b"pairpod: shared sessions on other gateway replicas cannot be reached now" in refused.stderr
    # A web page through another replica says the same, and so does its stream.
    status, page = fetch(cluster.replicas["C"].page(web["ro"]))
    assert status == 503
    assert f"pairpod: {ClusterUnavailable.user_message}" in page
    local = cluster.join("ro-on-a", "A", ro)  # the owner's own replica needs no store
    local.wait_for("web-c-20x70")  # the screen as the web joiners left it
    term.type("echo during-$((3*3))-outage\n")
    viewer.wait_for("during-9-outage")  # joiners already relayed are not affected
    cluster.redis.start()
    # A's heartbeat publishes its links again into the empty store.
    # Its two SSH and two web links.
    wait_until(
        lambda: len(stored(cluster.redis, "pairpod:link:*")) == 4, timeout=5 * TTL, message="links back"
    )
    # C learns that the store is back within its own retry interval: a joiner
    # meanwhile is refused and tries again, as a person would.
    for attempt in range(10):
        again = cluster.join(f"rw-on-c-{attempt}", "C", rw)
        if "outage" in again.wait_for("during-9-outage|Permission denied").group(0):
            break
    cluster.joiners["rw-on-c-again"] = again
    again.wait_for("during-9-outage")


async def test_owner_replica_lost(
    cluster: Cluster, owner: tuple[Tmux, str, str], web: dict[str, str]
) -> None:
    joiners = [cluster.joiners["ro-on-b"], cluster.joiners["rw-on-c-again"]]
    replica = cluster.replicas["A"]
    assert replica.proc is not None
    assert stored(cluster.redis, "pairpod:owner:*") == ["pairpod:owner:user:alice"]
    assert len(stored(cluster.redis, "pairpod:link:*")) == 4
    async with aiohttp.ClientSession() as http:
        page, hello = await open_page(http, cluster.replicas["B"].page(web["ro"]), attempts=10)
        assert hello["type"] == "hello", hello
        await messages_until(page, b"during-9-outage")
        # Frozen first, as a node lost without a word (no FIN): the links to it
        # fall silent and are dropped after the TTL (checked every heartbeat).
        replica.proc.send_signal(signal.SIGSTOP)
        ended = await messages_until(page, '"type": "end"')
        assert json.loads(str(ended[-1]))["reason"] == REPLICA_LOST
    for joiner in joiners:
        joiner.wait_for(
            r"shared session has ended \(its gateway replica is gone\)", timeout=TTL + HEARTBEAT + 2
        )
    replica.kill()
    # Nobody renews A's entries: they expire within the TTL.
    wait_until(
        lambda: stored(cluster.redis, "pairpod:link:*") == stored(cluster.redis, "pairpod:owner:*") == [],
        timeout=TTL + 2,
        message="A's entries gone",
    )


def test_a_restricted_session_asks_for_the_key_on_the_joiners_replica(
    cluster: Cluster, tmp_path: Path
) -> None:
    owner = cluster.terms.start("owner-on-c", cluster.replicas["C"].ssh_argv(options=SHARE))
    ro, _ = links(owner)
    owner.type("echo restricted-$((2*21))\n")
    owner.wait_for("restricted-42")
    stranger = ClientKey.create(tmp_path / "stranger")
    refused = cluster.replicas["B"].ssh(user=ro, key=stranger, options=["-tt", "-o", "LogLevel=INFO"])
    assert refused.returncode != 0
    assert b"pairpod: invalid or expired session" in refused.stderr
    # The owner's own key proves user:alice on B, as it would on C.
    cluster.join("owner-through-b", "B", ro).wait_for("restricted-42")
    owner.wait_for(r"user:alice joined \(read-only\)")
