"""The one typed configuration model of pairpod.

Every default lives here and nowhere else. The model is loaded from YAML,
overridden from the command line, and (per connection) by the config webhook;
all three paths validate through these classes, so an error always names the
key path and the problem.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pairpod.errors import ConfigError
from pairpod.eventloop import LoopChoice

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Turn ``30s``, ``5m``, ``1h``, ``250ms`` or a plain number into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """``1800`` -> ``30m``, ``90`` -> ``90s``, ``0.25`` -> ``250ms`` (as the config writes it)."""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""Seconds, written in the config as ``30s``, ``5m``, ``1h`` or a number."""


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:2222`` for IPv6) into its parts."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the documented default
    return host, port


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


ListenAddress = Annotated[str, AfterValidator(_check_listen)]
"""``HOST:PORT`` (``[::1]:2222`` for IPv6), checked when the config is loaded."""


def check_networks(value: list[str]) -> list[str]:
    """Check a list of CIDRs (``10.0.0.0/8``, ``::1/128``, a bare address)."""
    import ipaddress

    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"expected a CIDR such as 10.0.0.0/8, got {item!r}") from None
    return value


def same_address(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listen addresses would collide (same port on the same or a wildcard host)."""
    (host_a, port_a), (host_b, port_b) = a, b
    if port_a != port_b or port_a == 0:
        return False
    wildcard = {"0.0.0.0", "::", ""}  # noqa: S104 - comparing, not binding
    return host_a == host_b or host_a in wildcard or host_b in wildcard


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# AES-GCM first: measured about twice as fast as chacha20-poly1305 in AsyncSSH.
DEFAULT_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]

# Key exchange: no SHA-1, no NIST-curve hybrids or ECDH, no group exchange
# (AsyncSSH hands a client asking for it a 1024-bit group). The client's order
# picks the algorithm; the server's first entry only decides whether a client's
# guessed first packet is right (RFC 4253 section 7.1), and curve25519 is what
# guessing clients (dropbear) put first.
DEFAULT_KEX_ALGORITHMS = [
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "mlkem768x25519-sha256",
    "curve448-sha512",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
]

# MACs (used only with non-AEAD ciphers): SHA-2 and UMAC-128, encrypt-then-MAC first.
DEFAULT_MACS = [
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
    "umac-128@openssh.com",
]

# Host key signature algorithms: everything but SHA-1 (ssh-rsa) and DSA.
DEFAULT_HOST_KEY_ALGORITHMS = [
    "ssh-ed25519",
    "ssh-ed448",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
]


def _check_algorithms(kind: str, names: list[str], supported: list[bytes]) -> list[str]:
    """``names`` if AsyncSSH implements each of them; else an error listing what it does."""
    known = [name.decode() for name in supported]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unsupported {kind}(s) {unknown}; supported: {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"a {kind} is listed twice")
    return names


_MAX_STARTUPS_RE = re.compile(r"^(\d+)(?::(\d+):(\d+))?$")


def parse_max_startups(value: Any) -> tuple[int, int, int]:
    """``start:rate:full`` (as sshd's MaxStartups) or a single number ``full``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    match = _MAX_STARTUPS_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected start:rate:full such as 10:30:100, got {value!r}")
    if match.group(2) is None:
        full = int(match.group(1))
        return full, 100, full
    start, rate, full = (int(match.group(i)) for i in (1, 2, 3))
    if not 1 <= start <= full or not 1 <= rate <= 100:
        raise ValueError(f"need 1 <= start <= full and a rate of 1-100 (%), got {value!r}")
    return start, rate, full


class PtyLimit(Section):
    """The largest terminal a client may ask for (columns and rows)."""

    cols: int = Field(1000, ge=80, le=65535)
    rows: int = Field(1000, ge=24, le=65535)

    def bound(self, cols: int, rows: int) -> tuple[int, int]:
        """``(cols, rows)`` within 1 and this limit."""
        return max(1, min(cols, self.cols)), max(1, min(rows, self.rows))


class SSHSettings(Section):
    """Protocol-level settings of the SSH server."""

    login_timeout: Duration = 30.0
    keepalive_interval: Duration = 30.0
    keepalive_count_max: int = Field(3, ge=1)
    max_sessions: int = Field(10, ge=1, description="channels per connection")
    max_pty: PtyLimit = Field(default_factory=PtyLimit)
    max_startups: Annotated[
        tuple[int, int, int],
        BeforeValidator(parse_max_startups),
        PlainSerializer(lambda v: f"{v[0]}:{v[1]}:{v[2]}", return_type=str),
    ] = (10, 30, 100)
    per_source_max_startups: int | None = Field(5, ge=1)
    per_source_rate: float | None = Field(10.0, gt=0, description="new connections per second")
    per_source_burst: int = Field(40, ge=1)
    ciphers: list[str] = Field(default_factory=lambda: list(DEFAULT_CIPHERS), min_length=1)
    kex_algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_KEX_ALGORITHMS), min_length=1)
    macs: list[str] = Field(default_factory=lambda: list(DEFAULT_MACS), min_length=1)
    host_key_algorithms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_HOST_KEY_ALGORITHMS), min_length=1
    )

    @field_validator("ciphers")
    @classmethod
    def _known_ciphers(cls, ciphers: list[str]) -> list[str]:
        import asyncssh

        return _check_algorithms("cipher", ciphers, asyncssh.encryption.get_encryption_algs())

    @field_validator("kex_algorithms")
    @classmethod
    def _known_kex(cls, names: list[str]) -> list[str]:
        from asyncssh.kex import get_kex_algs

        # GSS-API key exchange needs Kerberos credentials pairpod never has.
        algorithms = [a for a in get_kex_algs() if not a.startswith(b"gss-")]
        return _check_algorithms("key exchange algorithm", names, algorithms)

    @field_validator("macs")
    @classmethod
    def _known_macs(cls, names: list[str]) -> list[str]:
        from asyncssh.mac import get_mac_algs

        return _check_algorithms("MAC", names, get_mac_algs())

    @field_validator("host_key_algorithms")
    @classmethod
    def _known_host_key_algorithms(cls, names: list[str]) -> list[str]:
        from asyncssh.public_key import get_public_key_algs

        return _check_algorithms("host key algorithm", names, get_public_key_algs())


class KeySourceSettings(Section):
    """A remote source of public keys such as ``https://github.com/<login>.keys``."""

    url: str
    ttl: Duration = 600.0
    timeout: Duration = 5.0


def _github_source() -> KeySourceSettings:
    return KeySourceSettings(url="https://github.com")


def _gitlab_source() -> KeySourceSettings:
    return KeySourceSettings(url="https://gitlab.com")


class KeySources(Section):
    """Where GitHub and GitLab users' keys are fetched from."""

    github: KeySourceSettings = Field(default_factory=_github_source)
    gitlab: KeySourceSettings = Field(default_factory=_gitlab_source)


class WebhookSettings(Section):
    """A ContainerSSH-compatible authentication webhook."""

    url: str
    timeout: Duration = 2.0
    retries: int = Field(2, ge=0, le=10)
    authz: bool = Field(
        False, description="after a login succeeds, ask POST <url>/authz (ContainerSSH's authz)"
    )


class ConfigWebhookSettings(Section):
    """A ContainerSSH-compatible configuration webhook."""

    url: str
    timeout: Duration = 2.0
    format: Literal["auto", "containerssh", "pairpod"] = Field(
        "auto", description="shape of the answer's config; auto tells them apart"
    )


class LockoutSettings(Section):
    """Lock an address or username out after repeated failures."""

    failures: int = Field(10, ge=1)
    window: Duration = 300.0
    duration: Duration = 900.0


class PasswordCheckSettings(Section):
    """How many password hashes are verified at once, and how many may wait."""

    workers: int = Field(2, ge=1, le=64)
    queue: int = Field(16, ge=0)


class UserSessionSettings(Section):
    """Per-user session limits (unset: the gateway's ``session`` values)."""

    idle_timeout: Duration | None = None
    max_duration: Duration | None = None


class UserSettings(Section):
    """One named identity that may log in."""

    keys: list[str] = Field(default_factory=list)
    authorized_keys: Path | None = None
    github: str | None = None
    gitlab: str | None = None
    password_hash: str | None = None
    sharing: UserSharingSettings | None = None
    session: UserSessionSettings | None = None


class AuthSettings(Section):
    """Who may log in, and how."""

    authorized_keys: Path | None = None
    users: dict[str, UserSettings] = Field(default_factory=dict)
    github_users: list[str] = Field(default_factory=list)
    gitlab_users: list[str] = Field(default_factory=list)
    key_sources: KeySources = Field(default_factory=KeySources)
    trusted_user_ca_keys: Path | None = None
    webhook: WebhookSettings | None = None
    config_webhook: ConfigWebhookSettings | None = None
    lockout: LockoutSettings = Field(default_factory=LockoutSettings)
    password_checks: PasswordCheckSettings = Field(default_factory=PasswordCheckSettings)

    @field_validator("users", mode="before")
    @classmethod
    def _null_user_is_empty(cls, users: Any) -> Any:
        # ``alice:`` with nothing under it reads as None in YAML.
        if isinstance(users, dict):
            return {name: ({} if value is None else value) for name, value in users.items()}
        return users


class LocalSettings(Section):
    """The local backend: a process on the gateway's own machine (for development)."""

    shell: list[str] = Field(default_factory=lambda: ["/bin/bash", "-l"], min_length=1)
    user: str | None = None
    workdir: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)


class DockerLimits(Section):
    """Resource limits of a container."""

    memory: str | None = "512m"
    cpus: float | None = Field(1.0, gt=0)
    pids: int | None = Field(256, ge=1)
    disk: str | None = Field(
        "1g", description="writable layer, where the storage driver can cap it (else logged)"
    )
    tmp: str | None = Field("256m", description="tmpfs on /tmp (counts as memory); null: none")

    @field_validator("memory", "disk", "tmp")
    @classmethod
    def _memory_size(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+[bkmgBKMG]?", value):
            raise ValueError(f"expected a size such as 512m or 2g, got {value!r}")
        return value


class DockerSecurity(Section):
    """Hardening of a container; the defaults are the safe choice."""

    no_new_privileges: bool = True
    cap_drop: list[str] = Field(default_factory=lambda: ["ALL"])
    cap_add: list[str] = Field(
        default_factory=lambda: ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "KILL"]
    )
    read_only_rootfs: bool = False


class DockerLogs(Section):
    """The log driver of a container: what its main process prints (the program itself
    in session mode) is kept by the engine, so it is capped."""

    driver: Literal["json-file", "local", "none"] = "json-file"
    max_size: str = "10m"
    max_files: int = Field(1, ge=1, le=100)

    @field_validator("max_size")
    @classmethod
    def _log_size(cls, value: str) -> str:
        if not re.fullmatch(r"\d+[kmgKMG]", value):
            raise ValueError(f"expected a size such as 10m or 1g, got {value!r}")
        return value


class DockerTimeouts(Section):
    """How long container start and stop may take."""

    start: Duration = 60.0
    stop: Duration = 10.0


class DockerSettings(Section):
    """The Docker backend: a container per connection (or per channel)."""

    host: str | None = None
    image: str = "debian:bookworm-slim"
    pull: Literal["if-missing", "always", "never"] = "if-missing"
    mode: Literal["connection", "session"] = "connection"
    idle_command: list[str] | None = None
    shell: list[str] = Field(default_factory=lambda: ["/bin/bash", "-l"], min_length=1)
    user: str | None = None
    workdir: str | None = None
    hostname: str = "{username}"
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str = "none"
    limits: DockerLimits = Field(default_factory=DockerLimits)
    security: DockerSecurity = Field(default_factory=DockerSecurity)
    logs: DockerLogs = Field(default_factory=DockerLogs)
    home_volume: str | None = None
    warm_pool: int = Field(0, ge=0, le=1000)
    timeouts: DockerTimeouts = Field(default_factory=DockerTimeouts)


class KubernetesLimits(Section):
    """Resource limits of a pod's shell container."""

    memory: str | None = "512Mi"
    cpu: str | None = "1"
    ephemeral_storage: str | None = "1Gi"


class KubernetesTimeouts(Section):
    """How long pod start and stop may take."""

    start: Duration = 120.0
    stop: Duration = 30.0


class KubernetesSettings(Section):
    """The Kubernetes backend: a pod per connection (or per channel)."""

    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str = "pairpod"
    pod: dict[str, Any] = Field(default_factory=dict)
    container: str = "shell"
    image: str = "debian:bookworm-slim"
    idle_command: list[str] | None = None
    shell: list[str] = Field(default_factory=lambda: ["/bin/bash", "-l"], min_length=1)
    mode: Literal["connection", "session"] = "connection"
    limits: KubernetesLimits = Field(default_factory=KubernetesLimits)
    warm_pool: int = Field(0, ge=0, le=1000)
    timeouts: KubernetesTimeouts = Field(default_factory=KubernetesTimeouts)


class SecuritySettings(Section):
    """What an SSH client may ask for."""

    env_allow: list[str] = Field(default_factory=lambda: ["LANG", "LC_*", "TERM", "TZ"])
    env_deny: list[str] = Field(default_factory=list, description="globs refused even if allowed")
    expose_auth_metadata_as_env: bool = Field(
        False, description="auth webhook metadata (never sensitive entries) become variables"
    )
    allow_exec: bool = True
    allow_shell: bool = True
    allow_pty: bool = True
    subsystems: list[Literal["sftp"]] = Field(default_factory=lambda: list[Literal["sftp"]](["sftp"]))
    force_command: str | None = None
    strict_modes: bool = True
    max_env_value: int = Field(64 * 1024, ge=1, description="bytes")
    max_env_vars: int = Field(
        128, ge=0, le=1024, description="client variables kept per session channel (as sshd: 128)"
    )
    max_command: int = Field(64 * 1024, ge=1, le=128 * 1024 - 1, description="bytes")


class LimitsSettings(Section):
    """How many environments (containers, pods) users may hold and open."""

    environments_per_user: int = Field(10, ge=1, description="held at once by one user")
    environments_total: int = Field(100, ge=1, description="held at once by the gateway")
    environment_rate: int = Field(60, ge=1, description="opened per user per minute")


class TimeoutSettings(Section):
    """Gateway-wide time limits on a connection."""

    first_channel: Duration = Field(
        30.0, gt=0, description="an authenticated connection must open a channel within this"
    )


class UserSharingSettings(Section):
    """Per-user sharing overrides."""

    auto: bool | None = None
    share_with: list[str] | None = None


class WebSettings(Section):
    """Web joiners: a shared terminal watched (or typed into) from a browser."""

    listen: ListenAddress | None = Field(
        None, description="HOST:PORT of the web joiner listener; off when unset"
    )
    public_url: str | None = Field(None, description="base of printed web links; default from listen")
    auto: bool = Field(False, description="print a read-only web link in every share notice")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: list[str] = Field(default_factory=list, description="CIDRs whose X-Forwarded-For counts")
    max_message: int = Field(64 * 1024, ge=1024, le=1 << 20, description="bytes per WebSocket message")
    header_timeout: Duration = Field(
        10.0, ge=1, le=300, description="a request's headers must arrive within this (then: closed)"
    )
    send_timeout: Duration = Field(
        60.0, ge=1, le=3600, description="a client that takes nothing sent to it for this long is cut"
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError(f"expected http(s)://HOST[:PORT][/PATH] without query, got {value!r}")
        return value.rstrip("/") if value is not None else None

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return check_networks(value)

    @model_validator(mode="after")
    def _tls_pair(self) -> WebSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("sharing.web.tls_cert and sharing.web.tls_key go together")
        return self


class SharingSettings(Section):
    """Live terminal sharing (tmate-style join links)."""

    enabled: bool = True
    auto: bool = False
    open: bool = False
    public_host: str | None = None
    public_port: int | None = Field(None, ge=1, le=65535)
    viewer_backlog: int = Field(1 << 20, ge=4096, description="bytes buffered per slow viewer")
    max_participants: int = Field(50, ge=1, description="joined viewers per shared session")
    hosts: list[str] = Field(default_factory=list, description="logins that may host (pairpod pair --via)")
    # At most a day: a host refuses a WELCOME with a longer grace period (hostwire.MAX_GRACE).
    host_grace: Duration = Field(
        120.0, gt=0, le=86400, description="how long a hosted session waits for its host"
    )
    max_hosted: int = Field(4, ge=1, description="hosted sessions per login at once")
    web: WebSettings = Field(default_factory=WebSettings)


class SessionSettings(Section):
    """Limits on how long a connection may live (0: no limit)."""

    idle_timeout: Duration = Field(0.0, description="no input and no output for this long")
    max_duration: Duration = 0.0


class RecordingSettings(Section):
    """Session recordings (asciicast v2) and the audit lines of non-PTY channels."""

    dir: Path | None = Field(None, description="off when unset")
    input: bool = False
    max_bytes: int = Field(100 << 20, ge=1024, description="per session")
    buffer: int = Field(8 << 20, ge=65536, description="bytes waiting for the disk, per session")


class ProxyProtocolSettings(Section):
    """PROXY protocol (v1, v2) from load balancers at these addresses."""

    trusted: list[str] = Field(default_factory=list)
    timeout: Duration = 5.0

    @field_validator("trusted")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return check_networks(value)


class LogSettings(Section):
    """Logging: one structured line per event."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class AdminSettings(Section):
    """The operator's side: the HTTP listener (metrics, probes) and the local admin socket."""

    listen: str | None = Field(None, description="HOST:PORT of /metrics, /healthz, /readyz")
    socket: Path | None = Field(None, description="Unix socket of `pairpod admin` (mode 0600)")

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


class ClusterSettings(Section):
    """Several gateway replicas sharing state in Redis (off: one replica, state in memory)."""

    redis: str | None = Field(None, description="redis:// or rediss:// URL; unset: a single replica")
    advertise: str | None = Field(
        None, description="HOST:PORT where the other replicas reach this one's replica listener"
    )
    listen: str | None = Field(
        None, description="HOST:PORT of the replica listener; default: advertise's port"
    )
    secret: str | None = Field(None, description="what replicas prove to each other; required with redis")
    heartbeat: Duration = Field(5.0, description="how often this replica renews its entries")
    ttl: Duration = Field(15.0, description="entries of a replica that stopped renewing expire after this")
    redis_timeout: Duration = Field(
        1.0, description="bound of each Redis command; past it the replica works alone until Redis answers"
    )

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {value!r}")
        return value

    @field_validator("advertise", "listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> ClusterSettings:
        if self.redis is not None and (self.advertise is None or not self.secret):
            raise ValueError(
                "cluster.redis needs cluster.advertise and cluster.secret "
                "(in the file, or PAIRPOD_CLUSTER_ADVERTISE and PAIRPOD_CLUSTER_SECRET)"
            )
        if self.secret is not None and len(self.secret) < 16:
            raise ValueError("cluster.secret must be at least 16 characters")
        if self.ttl <= self.heartbeat:
            raise ValueError("cluster.ttl must be longer than cluster.heartbeat")
        return self


#: Environment variables that set a cluster key over the file: what differs per
#: replica (its own address) or is kept in a Secret comes from the pod's env.
CLUSTER_ENV = {
    "PAIRPOD_CLUSTER_REDIS": "redis",
    "PAIRPOD_CLUSTER_ADVERTISE": "advertise",
    "PAIRPOD_CLUSTER_SECRET": "secret",
}


def cluster_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The cluster keys set by :data:`CLUSTER_ENV` variables in ``environ`` (empty ones ignored)."""
    keys = {key: environ[name] for name, key in CLUSTER_ENV.items() if environ.get(name)}
    return {"cluster": keys} if keys else {}


class AuditSettings(Section):
    """The audit log: one JSON object per line for each thing that happened."""

    file: Path | None = None


_INSTANCE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


def default_instance_id() -> str:
    """This host's name, made a valid instance id (stable across restarts)."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower())[:32].strip("-")
    return name or "pairpod"


class Config(Section):
    """The whole pairpod configuration."""

    listen: str = "0.0.0.0:2222"
    instance_id: str | None = Field(
        None,
        description="names this gateway's containers and pods; default: the host's name",
    )
    host_keys: list[Path] = Field(
        default_factory=lambda: [Path("/var/lib/pairpod/ssh_host_ed25519_key")], min_length=1
    )
    banner: str = ""
    event_loop: LoopChoice = Field(
        "auto", description="auto: uvloop when installed (pairpod[fast]), else asyncio's own"
    )
    ssh: SSHSettings = Field(default_factory=SSHSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    backend: Literal["local", "docker", "kubernetes"] = "local"
    local: LocalSettings = Field(default_factory=LocalSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    sharing: SharingSettings = Field(default_factory=SharingSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    session: SessionSettings = Field(default_factory=SessionSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    proxy_protocol: ProxyProtocolSettings = Field(default_factory=ProxyProtocolSettings)
    shutdown_grace: Duration = Field(30.0, description="how long sessions may run on at SIGTERM")
    admin: AdminSettings = Field(default_factory=AdminSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @model_validator(mode="after")
    def _admin_not_public(self) -> Config:
        # The admin listener must never be the port users reach.
        if self.admin.listen is not None and same_address(
            parse_listen(self.admin.listen), self.listen_address
        ):
            raise ValidationError.from_exception_data(
                "Config",
                [
                    {
                        "type": PydanticCustomError(
                            "same_address", "must not be the SSH address ({listen})", {"listen": self.listen}
                        ),
                        "loc": ("admin", "listen"),
                        "input": self.admin.listen,
                    }
                ],
            )
        return self

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        if value is not None and not _INSTANCE_ID_RE.match(value):
            raise ValueError(
                "expected 1-32 lowercase letters, digits or '-', starting and ending "
                f"with a letter or digit, got {value!r}"
            )
        return value

    @property
    def effective_instance_id(self) -> str:
        """The instance id in force: the configured one, else the host's name."""
        return self.instance_id or default_instance_id()

    @property
    def listen_address(self) -> tuple[str, int]:
        """The ``(host, port)`` to listen on."""
        return parse_listen(self.listen)


UserSettings.model_rebuild()


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the key path, e.g. ``ssh.max_sessions``."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {path}: {message}")
    return "\n".join(lines)


def validate_config(data: Any, source: str) -> Config:
    """Validate a mapping as a Config; raise ConfigError naming every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_yaml(path: Path) -> Any:
    """Read a YAML file, turning read and syntax errors into ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` over ``base`` (mappings merge, anything else replaces)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Load the config file (if any), then the cluster's environment variables and
    command-line overrides over it."""
    data: Any = load_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    return validate_config(merge(merge(data, cluster_env(os.environ)), overrides or {}), source)


def with_overrides(config: Config, overrides: dict[str, Any], source: str) -> Config:
    """A copy of ``config`` with a partial config merged over it, validated again."""
    base = config.model_dump(mode="json")
    return validate_config(merge(base, overrides), source)


#: What ``check-config`` prints for a secret that is set.
HIDDEN = "(hidden)"


def dump_config(config: Config) -> str:
    """The effective config as YAML (what ``check-config`` prints), the cluster's secrets hidden."""
    data = config.model_dump(mode="json")
    cluster = data["cluster"]
    if cluster["secret"]:
        cluster["secret"] = HIDDEN
    if cluster["redis"]:
        cluster["redis"] = url_without_password(cluster["redis"])
    return yaml.safe_dump(data, sort_keys=False)


def url_without_password(url: str) -> str:
    """``url`` with its user information hidden (``redis://:secret@host`` → ``redis://***@host``)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"
