"""PROXY protocol behind a real HAProxy (send-proxy-v2): the client's real address
reaches from= restrictions, lockout and logs; headers are refused where not trusted."""

from __future__ import annotations

import logging
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairpod.ssh.requests import SERVER_VERSION
from tests.conftest import MakeGateway
from tests.support.gateway import ClientKey, GatewayThread, require, wait_until
from tests.support.http_peers import AuthWebhookPeer, served_in_thread

# What the gateway says first on a connection it serves.
BANNER = f"SSH-2.0-{SERVER_VERSION}".encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HAProxy:
    """HAProxy in TCP mode on loopback, sending PROXY v2 to the gateway."""

    def __init__(self, directory: Path, backend_port: int) -> None:
        self.port = _free_port()
        self.config = directory / "haproxy.cfg"
        self.config.write_text(f"""\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend ssh
    bind 127.0.0.1:{self.port}
    default_backend gateway
backend gateway
    server gw 127.0.0.1:{backend_port} send-proxy-v2
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        """Run in the foreground of a child process; wait until it listens."""
        binary = require("haproxy")
        subprocess.run([binary, "-c", "-q", "-f", str(self.config)], check=True)
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._listening, message="haproxy to listen")
        return self

    def _listening(self) -> bool:
        # Read from the kernel's socket table, not probed: HAProxy would relay a
        # probe to the gateway whenever it gets round to it, amid the tests' clients.
        local = f"0100007F:{self.port:04X}"
        with open("/proc/net/tcp") as table:
            return any(line.split()[1:4:2] == [local, "0A"] for line in table)

    def stop(self) -> None:
        """Stop HAProxy."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def behind_haproxy(
    make_gateway: MakeGateway, tmp_path: Path, client_key: ClientKey
) -> Iterator[tuple[GatewayThread, HAProxy]]:
    """A gateway trusting 127.0.0.1 (HAProxy) and HAProxy in front of it."""
    authorized = tmp_path / "restricted_keys"
    authorized.write_text(f'from="127.0.0.2" {client_key.public_line}\n')
    gw = make_gateway(
        {
            "proxy_protocol": {"trusted": ["127.0.0.1/32"], "timeout": "2s"},
            "auth": {"authorized_keys": str(authorized), "lockout": {"failures": 2}},
        }
    )
    proxy = HAProxy(tmp_path, gw.port).start()
    try:
        yield gw, proxy
    finally:
        proxy.stop()


def _through(
    gw: GatewayThread, proxy: HAProxy, source: str, *command: str, key: ClientKey | None = None
) -> subprocess.CompletedProcess[bytes]:
    argv = gw.ssh_argv(*command, key=key, options=["-b", source])
    argv[argv.index(str(gw.port))] = str(proxy.port)
    return subprocess.run(argv, capture_output=True, timeout=60)


def test_from_restriction_sees_the_real_client(
    behind_haproxy: tuple[GatewayThread, HAProxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    gw, proxy = behind_haproxy
    allowed = _through(gw, proxy, "127.0.0.2", "echo in")
    assert (allowed.returncode, allowed.stdout) == (0, b"in\n")
    refused = _through(gw, proxy, "127.0.0.3", "echo in")
    assert refused.returncode == 255 and b"Permission denied" in refused.stderr
    remotes = [
        r.__dict__["pairpod_fields"]["remote"] for r in caplog.records if r.getMessage() == "connection.open"
    ]
    assert [r.rsplit(":", 1)[0] for r in remotes] == ["127.0.0.2", "127.0.0.3"]


def test_lockout_locks_the_real_client_not_the_balancer(
    behind_haproxy: tuple[GatewayThread, HAProxy], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    gw, proxy = behind_haproxy
    stranger = ClientKey.create(tmp_path / "stranger")
    for _ in range(2):
        assert _through(gw, proxy, "127.0.0.3", "true", key=stranger).returncode == 255
    locks = wait_until(
        lambda: [r.__dict__["pairpod_fields"] for r in caplog.records if r.getMessage() == "auth.lockout"],
        message="a lockout",
    )
    assert [(lock["kind"], lock["subject"]) for lock in locks] == [("address", "127.0.0.3")]
    # 127.0.0.3 is locked out; 127.0.0.2, through the same balancer, is not.
    assert _through(gw, proxy, "127.0.0.2", "echo ok").stdout == b"ok\n"


def _banner(port: int, source: str, send: bytes) -> bytes:
    """What the gateway answers a raw connection from ``source`` that sends ``send``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        if send:
            sock.sendall(send)
        chunks = []
        try:
            while chunk := sock.recv(4096):
                chunks.append(chunk)
                if b"\n" in chunk:
                    break
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def test_headers_only_from_trusted_sources(
    behind_haproxy: tuple[GatewayThread, HAProxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    gw, _ = behind_haproxy
    header = b"PROXY TCP4 203.0.113.9 127.0.0.1 1234 22\r\n"
    # An untrusted source may not claim another address: closed without a word.
    assert _banner(gw.port, "127.0.0.2", header + b"SSH-2.0-x\r\n") == b""
    # A trusted source must send a header: plain SSH from it is closed as well.
    assert _banner(gw.port, "127.0.0.1", b"SSH-2.0-x\r\n") == b""
    # A malformed header from a trusted source: closed.
    assert _banner(gw.port, "127.0.0.1", b"PROXY TCP4 nonsense\r\n") == b""
    # A good header from a trusted source, and plain SSH from an untrusted one, are served.
    assert _banner(gw.port, "127.0.0.1", header + b"SSH-2.0-x\r\n").startswith(BANNER)
    assert _banner(gw.port, "127.0.0.2", b"SSH-2.0-x\r\n").startswith(BANNER)
    # A trusted source that sends nothing is closed after proxy_protocol.timeout.
    assert _banner(gw.port, "127.0.0.1", b"") == b""
    reasons = [
        r.__dict__["pairpod_fields"]["reason"] for r in caplog.records if r.getMessage() == "proxy.refused"
    ]
    assert reasons[0] == "a PROXY header from an address not in proxy_protocol.trusted"
    assert reasons[1] == "the connection did not start with a PROXY header"
    assert "PROXY v1" in reasons[2]
    assert reasons[3] == "no PROXY header in time"


def test_webhooks_get_the_real_client_address(make_gateway: MakeGateway, tmp_path: Path) -> None:
    peer = AuthWebhookPeer()
    with served_in_thread(peer):
        gw = make_gateway(
            {"proxy_protocol": {"trusted": ["127.0.0.1/32"]}, "auth": {"webhook": {"url": peer.url}}}
        )
        proxy = HAProxy(tmp_path, gw.port).start()
        try:
            stranger = ClientKey.create(tmp_path / "stranger")  # unknown to the file: ask the hook
            assert _through(gw, proxy, "127.0.0.4", "true", key=stranger).returncode == 255
        finally:
            proxy.stop()
    addresses = {body["remoteAddress"].rsplit(":", 1)[0] for path, body in peer.requests if path == "/pubkey"}
    assert addresses == {"127.0.0.4"}
