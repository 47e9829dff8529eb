"""Connections that never log in: MaxStartups, per-source caps and rates, open files."""

from __future__ import annotations

import contextlib
import re
import resource
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.support.gateway import GatewayProcess, wait_until

# How long the last silent_connections took to connect them all.
connect_seconds: list[float] = []
# How long a dropped connection may take to be closed by the gateway (a liveness bound).
CLOSED_WITHIN = 5.0


@contextlib.contextmanager
def silent_connections(gateway: GatewayProcess, sources: list[str]) -> Iterator[list[bool]]:
    """One TCP connection per source that never says a word; yields which stay open."""
    socks = []
    began = time.monotonic()
    try:
        for source in sources:
            sock = socket.socket()
            socks.append(sock)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", gateway.port))
        connect_seconds.append(time.monotonic() - began)
        yield still_open(socks)
    finally:
        for sock in socks:
            sock.close()


def still_open(socks: list[socket.socket]) -> list[bool]:
    """Which sockets the gateway has not closed within CLOSED_WITHIN (read what it sends)."""
    open_ = dict.fromkeys(socks, True)
    deadline = time.monotonic() + CLOSED_WITHIN
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([s for s in socks if open_[s]], [], [], left)
        if not readable:
            break
        for sock in readable:
            try:
                open_[sock] = bool(sock.recv(4096))
            except ConnectionResetError:
                open_[sock] = False
    return [open_[sock] for sock in socks]


def test_one_address_holds_at_most_per_source_max_startups(serve: ServeGateway) -> None:
    gateway = serve()  # the defaults: 5 per source, max_startups 10:30:100
    with silent_connections(gateway, ["127.0.0.2"] * 30) as open_:
        assert sum(open_) == 5
        # Another address is not affected (5 < start: no random early drop).
        assert_probe_login_prompt(gateway)
    assert "per_source_max_startups" in gateway.log()


def test_max_startups_drops_between_start_and_full(serve: ServeGateway) -> None:
    gateway = serve({"ssh": {"max_startups": "4:50:8", "per_source_max_startups": None}})
    with silent_connections(gateway, [f"127.0.3.{n}" for n in range(1, 41)]) as open_:
        held = sum(open_)
        assert 4 <= held <= 8
    # Once they are gone, everyone gets in again.
    assert_probe_login_prompt(gateway)
    log = gateway.log()
    assert "max_startups:" in log
    if held < 8:
        # Never full: every connection turned away was a random early drop. (At 8,
        # the four admitted past start may all have won their draws, about 1 in 170.)
        assert "random early drop" in log and "(full 8)" not in log


def test_new_connections_per_source_are_rate_limited(serve: ServeGateway) -> None:
    gateway = serve(
        {
            "ssh": {
                "per_source_rate": 2,
                "per_source_burst": 5,
                "per_source_max_startups": None,
                "max_startups": "1000",
            }
        }
    )
    with silent_connections(gateway, ["127.0.0.5"] * 30) as open_:
        admitted = sum(open_)
    elapsed = connect_seconds[-1]
    print(f"{admitted} of 30 admitted in {elapsed:.1f}s")
    assert 5 <= admitted <= 5 + 2 * elapsed + 1
    assert "per_source_rate" in gateway.log()
    assert_probe_login_prompt(gateway)


def test_refusals_are_logged_as_a_summary_not_a_flood(serve: ServeGateway) -> None:
    gateway = serve({"ssh": {"per_source_max_startups": 1}})
    with silent_connections(gateway, ["127.0.0.6"] * 60) as open_:
        assert sum(open_) == 1
    lines = [line for line in gateway.log().splitlines() if "connection.refused" in line]
    assert len(lines) <= 10  # at most 10 warnings of one kind per 10 s
    suppressed = sum(int(m) for m in re.findall(r"suppressed=(\d+)", gateway.log()))
    print(f"{len(lines)} refusal lines logged, {suppressed} reported as suppressed so far")


def test_serve_raises_its_open_files_limit_to_the_hard_limit(serve: ServeGateway) -> None:
    gateway = serve()
    assert gateway.proc is not None
    limits = Path(f"/proc/{gateway.proc.pid}/limits").read_text()
    soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()  # type: ignore[union-attr]
    assert soft == hard == str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_out_of_file_descriptors_pauses_accepting_and_logs_a_summary(serve: ServeGateway, loop: str) -> None:
    gateway = serve(
        {
            "event_loop": loop,
            "ssh": {"max_startups": "1000", "per_source_max_startups": None, "per_source_rate": None},
        }
    )
    assert gateway.proc is not None
    subprocess.run(["prlimit", f"--pid={gateway.proc.pid}", "--nofile=64:64"], check=True)
    with silent_connections(gateway, ["127.0.0.7"] * 150):
        if loop == "asyncio":
            # Past 64 descriptors accept() fails with EMFILE: asyncio stops accepting for a
            # second each time, and the error is logged at most 10 times per 10 s.
            wait_until(lambda: "out of system resource" in gateway.log(), message="EMFILE hit")
            time.sleep(3)  # let the listener retry a few times while nothing is freed
            errors = gateway.log().count("out of system resource")
            assert 1 <= errors <= 10, errors
        # (uvloop's listener, libuv's, sheds connections past the limit with a
        # descriptor it keeps in reserve: nothing to log, nothing spins.)
    # The connections are gone: descriptors are free and logins work again.
    assert_probe_login_prompt(gateway)
