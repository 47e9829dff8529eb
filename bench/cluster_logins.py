"""Redis round trips per login on three replicas (``python bench/cluster_logins.py``).

Starts a ``redis-server`` and three ``pairpod serve`` replicas on loopback, a
key source (Python's ``http.server`` serving ``<login>.keys`` files), and
watches Redis with ``MONITOR``. Each login is a real OpenSSH ``ssh ... true``.
The replicas reach Redis through a relay that counts round trips (a
client's write after Redis's answer: a pipeline is one); ``MONITOR`` names
the commands (those a script runs inside Redis are not listed). The
replicas' health PINGs are left out: they do not depend on logins.

Scenarios, each on fresh logins:

- key in ``authorized_keys``, round robin over the replicas;
- a GitHub user's key: the first login in the cluster, then the same user
  through the two other replicas, then again within the ttl;
- a wrong password (AsyncSSH as the client; the failure of the address and
  of the username is written in the background).

Goal (issue 17): at most 2 round trips per login.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh

from common import Peer, Workdir, free_port, machine, ssh_argv, start_pairpod, wait_for_port

GOAL = 2.0


class Monitor:
    """``redis-cli MONITOR`` into a file; counts the replicas' commands."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        self._out = path.open("wb")
        self.proc = subprocess.Popen(
            ["redis-cli", "-p", str(port), "monitor"], stdout=self._out, stderr=subprocess.STDOUT
        )
        self.port = port

    def commands(self) -> list[tuple[float, str, str]]:
        """(time, client, command) of each command a client sent (not PING, MONITOR, or inside scripts)."""
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            match = re.match(r'([\d.]+) \[\d+ ([^\]]+)\] "(\w+)"', line)
            if match and match.group(2) != "lua" and match.group(3).upper() not in ("PING", "MONITOR"):
                found.append((float(match.group(1)), match.group(2), match.group(3).upper()))
        return found

    def settle(self) -> None:
        """Wait until background writes have landed (a marker command shows up after them)."""
        marker = secrets.token_hex(4)
        deadline = time.monotonic() + 5
        # The replicas write in the background: give them a moment, then mark the spot.
        while time.monotonic() < deadline:
            seen = len(self.commands())
            time.sleep(0.3)
            if len(self.commands()) == seen:
                break
        subprocess.run(["redis-cli", "-p", str(self.port), "echo", marker], capture_output=True, check=True)
        while marker not in self.path.read_text(errors="replace"):
            time.sleep(0.02)

    def stop(self) -> None:
        """End MONITOR."""
        self.proc.terminate()
        self.proc.wait(10)
        self._out.close()


class TripCounter:
    """A TCP relay between the replicas and Redis that counts round trips.

    A round trip is a client's write that follows Redis's answer (or opens the
    connection): a pipeline is one write, however many commands it holds. The
    replicas' health PINGs are not counted.
    """

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.trips = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        redis_in, redis_out = await asyncio.open_connection("127.0.0.1", self.redis_port)
        answered = asyncio.Event()
        answered.set()  # the first write opens a round trip

        async def upstream() -> None:
            while data := await client_in.read(65536):
                if answered.is_set() and not data.upper().startswith(b"*1\r\n$4\r\nPING"):
                    self.trips += 1
                answered.clear()
                redis_out.write(data)
                await redis_out.drain()
            redis_out.close()

        async def downstream() -> None:
            while data := await redis_in.read(65536):
                answered.set()
                client_out.write(data)
                await client_out.drain()
            client_out.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)


def measure(
    monitor: Monitor, counter: TripCounter, logins: Callable[[], int]
) -> tuple[int, int, dict[str, int]]:
    """(logins, round trips, commands by name) of running ``logins``."""
    monitor.settle()
    before, trips = len(monitor.commands()), counter.trips
    count = logins()
    monitor.settle()
    after = [c for c in monitor.commands()[before:] if c[2] != "ECHO"]
    by_command: dict[str, int] = {}
    for _, _, command in after:
        by_command[command] = by_command.get(command, 0) + 1
    return count, counter.trips - trips, by_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10, help="fresh users per scenario")
    args = parser.parse_args()
    work = Workdir()
    peers: list[Peer] = []
    monitor: Monitor | None = None
    try:
        redis_port = free_port()
        peers.append(
            Peer(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                redis_port,
                work.path / "redis.log",
            )
        )
        keys_dir = work.path / "keys"
        keys_dir.mkdir()
        github = [f"octo{i}" for i in range(args.users)]
        # GitHub users log in with a key of their own (not in authorized_keys).
        github_key = work.path / "github_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(github_key)], check=True)
        for login in github:
            (keys_dir / f"{login}.keys").write_text((work.path / "github_key.pub").read_text())
        keys_port = free_port()
        peers.append(
            Peer(
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(keys_dir),
                    str(keys_port),
                ],
                keys_port,
                work.path / "keys.log",
            )
        )
        counter = TripCounter(redis_port)
        from pairpod.auth import hash_password

        password_hash = hash_password(secrets.token_hex(8))
        authorized = work.path / "authorized_keys"
        authorized.write_text(work.public_key)
        replicas = []
        for name in "abc":
            replicas.append(
                start_pairpod(
                    work,
                    {
                        "auth": {
                            "authorized_keys": str(authorized),
                            "github_users": github,
                            "users": {"pw": {"password_hash": password_hash}},
                            "key_sources": {"github": {"url": f"http://127.0.0.1:{keys_port}"}},
                            "lockout": {"failures": 1000},
                        },
                        "local": {"shell": ["/bin/sh"]},
                        "log": {"level": "info"},  # cluster.redis_up tells when a replica is ready
                        "instance_id": f"bench-{name}",
                        "cluster": {
                            "redis": f"redis://127.0.0.1:{counter.port}/0",
                            "advertise": f"127.0.0.1:{free_port()}",
                            "secret": secrets.token_hex(16),
                        },
                    },
                    name=f"replica-{name}",
                )
            )
        peers.extend(replicas)
        for replica in replicas:
            wait_for_port(replica.port)
        log_of = [work.path / f"replica-{n}.log" for n in "abc"]
        deadline = time.monotonic() + 30
        while not all("cluster.redis_up" in p.read_text() for p in log_of if p.exists()):
            if time.monotonic() > deadline:
                raise RuntimeError("the replicas did not reach Redis")
            time.sleep(0.05)
        monitor = Monitor(redis_port, work.path / "monitor.log")
        time.sleep(0.2)  # MONITOR attached before the first measured command

        def login(replica: Peer, user: str, *extra: str) -> bool:
            key = ("-i", str(github_key)) if user in github else ()
            argv = ssh_argv(work, replica.port, "true", extra=(*key, "-o", f"User={user}", *extra))
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0

        rows: list[tuple[str, int, int, dict[str, int]]] = []

        def authorized_keys() -> int:
            for i in range(args.users):
                assert login(replicas[i % 3], f"user{i}")
            return args.users

        def first_github(replica: Peer) -> Callable[[], int]:
            def run() -> int:
                for user in github:
                    assert login(replica, user)
                return len(github)

            return run

        def others_github() -> int:
            for user in github:
                assert login(replicas[1], user) and login(replicas[2], user)
            return 2 * len(github)

        def wrong_password() -> int:
            async def attempt(replica: Peer) -> None:
                try:
                    async with asyncssh.connect(
                        "127.0.0.1",
                        replica.port,
                        username="pw",
                        password=secrets.token_hex(8),  # never the right one
                        client_keys=None,
                        known_hosts=None,
                        preferred_auth="password",
                    ):
                        raise AssertionError("a wrong password logged in")
                except asyncssh.PermissionDenied:
                    pass

            for i in range(args.users):
                asyncio.run(attempt(replicas[i % 3]))
            return args.users

        for title, run in (
            ("key in authorized_keys", authorized_keys),
            ("GitHub key, first login in the cluster", first_github(replicas[0])),
            ("GitHub key, same user through the two other replicas", others_github),
            ("GitHub key, again within the ttl", first_github(replicas[0])),
            ("wrong password (refused; the failure written in the background)", wrong_password),
        ):
            count, trips, by_command = measure(monitor, counter, run)
            rows.append((title, count, trips, by_command))

        print("\n### Redis round trips per login (three replicas)\n")
        print(f"Machine: {machine()}\n")
        print("| login | logins | round trips | per login | Redis commands | goal |")
        print("|---|---|---|---|---|---|")
        for title, count, trips, by_command in rows:
            per = trips / count
            verdict = "met" if per <= GOAL else "NOT met"
            commands = ", ".join(f"{name} {n}" for name, n in sorted(by_command.items())) or "none"
            print(f"| {title} | {count} | {trips} | {per:.2f} | {commands} | <= {GOAL:g} ({verdict}) |")
        served = (work.path / "keys.log").read_text().count("GET /")
        print(f"\nKey source asked {served} times for {len(github)} GitHub users over three replicas.")
    finally:
        if monitor is not None:
            monitor.stop()
        for peer in reversed(peers):
            peer.stop()
        work.cleanup()


if __name__ == "__main__":
    main()
