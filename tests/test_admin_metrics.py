"""Metrics and probes of the admin HTTP listener, read by real clients (and a real Prometheus)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairpod.backends.kubernetes import KubernetesBackend
from pairpod.config import validate_config
from pairpod.errors import BackendUnavailable, ConfigError
from testing.kube_apiserver.fixture import KubeApiServerThread
from tests.conftest import MakeGateway
from tests.support.client import connect
from tests.support.docker_env import docker_overrides
from tests.support.gateway import ClientKey, GatewayThread, wait_until
from tests.support.http_client import SampleKey, http_get, scrape

ADMIN = {"admin": {"listen": "127.0.0.1:0"}}


def admin_url(gw: GatewayThread, path: str) -> str:
    assert gw.gateway.ops.http is not None
    return f"http://127.0.0.1:{gw.gateway.ops.http.port}{path}"


def samples(gw: GatewayThread) -> dict[SampleKey, float]:
    """Every sample of the gateway's /metrics."""
    return scrape(admin_url(gw, "/metrics"))


def value(found: dict[SampleKey, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_real_logins_bytes_and_failures(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gw = make_gateway(ADMIN)
    out = gw.ssh("head -c 100000 /dev/zero")
    assert out.returncode == 0 and len(out.stdout) == 100000
    sink = gw.ssh("cat >/dev/null", input=b"x" * 5000)
    assert sink.returncode == 0
    stranger = ClientKey.create(tmp_path / "stranger")
    assert gw.ssh("true", key=stranger).returncode == 255
    wait_until(lambda: gw.connection_count() == 0, message="connections closed")

    found = samples(gw)
    assert value(found, "pairpod_connections_total") == 3
    assert value(found, "pairpod_connections") == 0
    assert value(found, "pairpod_channels") == 0
    assert value(found, "pairpod_auth_attempts_total", method="publickey", result="success") == 2
    assert value(found, "pairpod_auth_attempts_total", method="publickey", result="failure") == 1
    assert value(found, "pairpod_bytes_total", direction="out") == 100000
    assert value(found, "pairpod_bytes_total", direction="in") == 5000
    assert value(found, "pairpod_environment_start_seconds_count", backend="local", start="cold") == 2
    # A single gateway has no cluster store to report on.
    assert not [name for name, _ in found if name.startswith("pairpod_cluster")]
    # No user names or addresses in any label.
    for _, labels in found:
        for _, label_value in labels:
            assert "alice" not in label_value and "127.0.0.1" not in label_value


async def test_gauges_follow_live_channels_and_shared_sessions(make_gateway: MakeGateway) -> None:
    gw = make_gateway(ADMIN)
    async with await connect(gw) as conn:
        process = await conn.create_process(term_type="xterm", term_size=(80, 24), env={"PAIRPOD_SHARE": "1"})
        await asyncio.wait_for(process.stdout.readuntil("this session is shared"), 20)
        found = await asyncio.to_thread(samples, gw)
        assert value(found, "pairpod_connections") == 1
        assert value(found, "pairpod_channels") == 1
        assert value(found, "pairpod_shared_sessions") == 1
        assert value(found, "pairpod_share_participants") == 1
        process.stdin.write("exit\n")
        await process.wait_closed()
    await asyncio.to_thread(wait_until, lambda: gw.connection_count() == 0)
    found = await asyncio.to_thread(samples, gw)
    assert value(found, "pairpod_shared_sessions") == 0
    assert value(found, "pairpod_channels") == 0


def test_environment_errors_are_counted_by_reason(make_gateway: MakeGateway) -> None:
    gw = make_gateway({**ADMIN, "local": {"user": "no-such-user-here"}})
    result = gw.ssh("true")
    assert result.returncode != 0
    assert value(samples(gw), "pairpod_environment_errors_total", reason="BackendError") == 1


def test_healthz_answers_and_readyz_is_ready_with_the_local_backend(make_gateway: MakeGateway) -> None:
    gw = make_gateway(ADMIN)
    assert http_get(admin_url(gw, "/healthz")) == (200, "ok\n")
    assert http_get(admin_url(gw, "/readyz")) == (200, "ready\n")


def test_admin_listen_may_not_be_the_ssh_address() -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen: must not be the SSH address"):
        validate_config({"listen": "0.0.0.0:2222", "admin": {"listen": "127.0.0.1:2222"}}, "c")
    assert (
        validate_config({"listen": "0.0.0.0:2222", "admin": {"listen": "127.0.0.1:9090"}}, "c").admin.listen
        == "127.0.0.1:9090"
    )


def test_metrics_of_two_gateways_in_one_process_stay_apart(make_gateway: MakeGateway) -> None:
    first, second = make_gateway(ADMIN), make_gateway(ADMIN)
    assert first.ssh("true").returncode == 0
    assert value(samples(first), "pairpod_connections_total") == 1
    assert value(samples(second), "pairpod_connections_total") == 0


# --- a real Prometheus server scraping the admin listener -------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """Debian's prometheus on loopback, scraping ``target`` every second; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (scripts/test-deps.sh installs it)")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [{"job_name": "pairpod", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_a_real_prometheus_scrapes_the_gateway(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gw = make_gateway(ADMIN)
    assert gw.ssh("true").returncode == 0
    assert gw.gateway.ops.http is not None
    with prometheus(tmp_path, f"127.0.0.1:{gw.gateway.ops.http.port}") as url:
        query = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": "pairpod_connections_total"})

        def scraped() -> list[dict[str, object]] | None:
            try:
                status, body = http_get(query)
            except OSError:
                return None  # not listening yet
            results = json.loads(body)["data"]["result"] if status == 200 else []
            return results or None

        results = wait_until(scraped, timeout=60, interval=0.5, message="Prometheus's first scrape")
    assert results[0]["metric"]["job"] == "pairpod"
    assert float(results[0]["value"][1]) == 1


# --- /readyz follows the Docker engine ---------------------------------------------------


class UnixProxy:
    """A Unix socket in front of the Docker engine's, which the test can stop and start.

    Others use the shared engine concurrently, so the test never stops the engine
    itself: it points the gateway at this proxy and stops the proxy instead.
    """

    def __init__(self, path: Path, upstream: str) -> None:
        self.path = path
        self.upstream = upstream
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def start(self) -> None:
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._relay, str(self.path))

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self.path.unlink(missing_ok=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_readyz_goes_503_while_the_docker_engine_is_unreachable(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    engine = "/var/run/docker.sock"
    if not Path(engine).exists():
        pytest.skip("no Docker engine socket")
    proxy = UnixProxy(tmp_path / "docker.sock", engine)
    proxy.start()
    try:
        gw = make_gateway({**ADMIN, "backend": "docker", "docker": {"host": f"unix://{proxy.path}"}})
        assert http_get(admin_url(gw, "/readyz")) == (200, "ready\n")
        proxy.stop()
        status, body = http_get(admin_url(gw, "/readyz"))
        assert status == 503
        assert body.startswith("not ready: docker engine at unix://") and "unreachable" in body
        assert http_get(admin_url(gw, "/healthz")) == (200, "ok\n")  # the process still serves
        proxy.start()
        assert http_get(admin_url(gw, "/readyz")) == (200, "ready\n")
    finally:
        proxy.close()


# --- /readyz asks the Kubernetes API -----------------------------------------------------


async def test_kubernetes_readiness_follows_the_api_server(tmp_path: Path) -> None:
    # A server of this test's own: it is stopped halfway, which the shared one must not be.
    server = KubeApiServerThread(tmp_path).start()
    stopped = False
    config = validate_config(
        {"backend": "kubernetes", "kubernetes": {"kubeconfig": str(server.kubeconfig)}}, "test config"
    )
    backend = KubernetesBackend(config, "readiness-test")
    try:
        await backend.api.connect()
        await backend.check()  # answers: ready
        await asyncio.to_thread(server.stop)
        stopped = True
        with pytest.raises(BackendUnavailable, match="kubernetes API"):
            await backend.check()
    finally:
        await backend.api.close()
        if not stopped:
            server.stop()


def test_environment_start_times_tell_warm_from_cold_docker_starts(make_gateway: MakeGateway) -> None:
    gw = make_gateway({**ADMIN, **docker_overrides(image="busybox", warm_pool=1)})
    wait_until(lambda: gw.gateway.backend.pool_size() == 1, message="the warm pool")  # type: ignore[attr-defined]
    assert gw.ssh("true").returncode == 0  # takes the pooled container
    found = samples(gw)
    assert value(found, "pairpod_environment_start_seconds_count", backend="docker", start="warm") == 1
    assert value(found, "pairpod_environment_start_seconds_count", backend="docker", start="cold") == 0
