"""Prometheus metrics of one gateway, in a registry of its own.

Events (a connection, a login, an environment) are counted as they happen;
what is a state (connections, channels, shared sessions) or is counted on the
data path (bytes) is read from the gateway only when Prometheus scrapes.
Labels never carry a username or an address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Environment start times: a warm pool answers in milliseconds, a cold
# container in about a second, an image pull or a pod in tens of seconds.
_START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class GatewayState:
    """What a scrape reads from the gateway at that moment."""

    connections: int
    channels: int
    shared_sessions: int
    share_participants: int
    bytes_received: int
    bytes_sent: int
    #: Whether the cluster's Redis is up for this replica (None: not in a cluster).
    cluster_redis_up: bool | None = None


class _StateCollector(Collector):
    """Turns a :class:`GatewayState` read at scrape time into metric families."""

    def __init__(self, read: Callable[[], GatewayState]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        yield GaugeMetricFamily("pairpod_connections", "SSH connections open now", value=state.connections)
        yield GaugeMetricFamily(
            "pairpod_channels", "Session channels (shells, commands, sftp) open now", value=state.channels
        )
        yield GaugeMetricFamily(
            "pairpod_shared_sessions", "Terminals being shared now", value=state.shared_sessions
        )
        yield GaugeMetricFamily(
            "pairpod_share_participants",
            "People in shared terminals now (owners and joiners)",
            value=state.share_participants,
        )
        traffic = CounterMetricFamily(
            "pairpod_bytes", "Bytes relayed over SSH channels", labels=["direction"]
        )
        traffic.add_metric(["in"], state.bytes_received)
        traffic.add_metric(["out"], state.bytes_sent)
        yield traffic
        if state.cluster_redis_up is not None:
            # Absent on a single gateway: an alert on 0 fires only for a replica that lost Redis.
            yield GaugeMetricFamily(
                "pairpod_cluster_redis_up",
                "Whether this replica reaches the cluster's Redis (1) or works alone (0)",
                value=int(state.cluster_redis_up),
            )


class Metrics:
    """The gateway's metrics; ``read_state`` is called on each scrape."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, read_state: Callable[[], GatewayState]) -> None:
        # A registry per gateway: several gateways in one process never collide.
        self.registry = CollectorRegistry()
        self.connections = Counter("pairpod_connections", "SSH connections accepted", registry=self.registry)
        self.auth_attempts = Counter(
            "pairpod_auth_attempts",
            "Authentication decisions: one success per login, one failure per refused credential",
            ["method", "result"],
            registry=self.registry,
        )
        self.environment_start = Histogram(
            "pairpod_environment_start_seconds",
            "Time to make a connection's environment ready",
            ["backend", "start"],
            buckets=_START_BUCKETS,
            registry=self.registry,
        )
        self.environment_errors = Counter(
            "pairpod_environment_errors",
            "Environments that could not be made, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(read_state))

    def exposition(self) -> bytes:
        """Everything, in the Prometheus text format."""
        return generate_latest(self.registry)
