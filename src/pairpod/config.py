"""The one typed configuration model of pairpod.

Every default lives here and nowhere else. The model is loaded from YAML,
overridden from the command line, and (per connection) by the config webhook;
all three paths validate through these classes, so an error always names the
key path and the problem.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)

from pairpod.errors import ConfigError

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


class SSHSettings(Section):
    """Protocol-level settings of the SSH server."""

    login_timeout: Duration = 30.0
    keepalive_interval: Duration = 30.0
    keepalive_count_max: int = Field(3, ge=1)
    max_sessions: int = Field(10, ge=1, description="channels per connection")
    ciphers: list[str] = Field(default_factory=lambda: list(DEFAULT_CIPHERS), min_length=1)

    @field_validator("ciphers")
    @classmethod
    def _known_ciphers(cls, ciphers: list[str]) -> list[str]:
        import asyncssh

        supported = {name.decode() for name in asyncssh.encryption.get_encryption_algs()}
        unknown = [c for c in ciphers if c not in supported]
        if unknown:
            raise ValueError(f"unsupported cipher(s) {unknown}; supported: {sorted(supported)}")
        return ciphers


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


class ConfigWebhookSettings(Section):
    """A ContainerSSH-compatible configuration webhook."""

    url: str
    timeout: Duration = 2.0


class LockoutSettings(Section):
    """Lock an address or username out after repeated failures."""

    failures: int = Field(10, ge=1)
    window: Duration = 300.0
    duration: Duration = 900.0


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

    @field_validator("memory")
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
    allow_exec: bool = True
    allow_shell: bool = True
    allow_pty: bool = True
    subsystems: list[Literal["sftp"]] = Field(default_factory=lambda: ["sftp"])
    force_command: str | None = None


class UserSharingSettings(Section):
    """Per-user sharing overrides."""

    auto: bool | None = None
    share_with: list[str] | None = None


class SharingSettings(Section):
    """Live terminal sharing (tmate-style join links)."""

    enabled: bool = True
    auto: bool = False
    open: bool = False
    public_host: str | None = None
    public_port: int | None = Field(None, ge=1, le=65535)
    viewer_backlog: int = Field(1 << 20, ge=4096, description="bytes buffered per slow viewer")


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
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"expected a CIDR such as 10.0.0.0/8, got {item!r}") from None
        return value


class LogSettings(Section):
    """Logging: one structured line per event."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


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
    ssh: SSHSettings = Field(default_factory=SSHSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    backend: Literal["local", "docker", "kubernetes"] = "local"
    local: LocalSettings = Field(default_factory=LocalSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    sharing: SharingSettings = Field(default_factory=SharingSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    session: SessionSettings = Field(default_factory=SessionSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    proxy_protocol: ProxyProtocolSettings = Field(default_factory=ProxyProtocolSettings)
    shutdown_grace: Duration = Field(30.0, description="how long sessions may run on at SIGTERM")

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
    """Load the config file (if any) and apply command-line overrides over it."""
    data: Any = load_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    return validate_config(merge(data, overrides or {}), source)


def with_overrides(config: Config, overrides: dict[str, Any], source: str) -> Config:
    """A copy of ``config`` with a partial config merged over it, validated again."""
    base = config.model_dump(mode="json")
    return validate_config(merge(base, overrides), source)


def dump_config(config: Config) -> str:
    """The effective config as YAML (what ``check-config`` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
