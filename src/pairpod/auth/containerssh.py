"""ContainerSSH's config-server answers (its ``AppConfig``) mapped onto pairpod's config.

A ContainerSSH config server answers ``{"config": AppConfig}``. Its Go
library marshals the *whole* struct, so every section arrives, most of them
empty: ``"log": {"level": "emerg", ...}``, ``"ssh": {"listen": "", ...}``,
``"docker": {"execution": {"container": null, ...}}``. ContainerSSH itself
merges only the non-zero values over its own config (``mergo`` with
override), so a zero value means "not set" here too.

:func:`to_pairpod` turns such an answer into a partial config in pairpod's
own shape (then merged and validated like any other override):

- per-connection settings pairpod has are mapped (the table in README's
  "ContainerSSH compatibility" section);
- zero values, and the values ContainerSSH uses by default for what pairpod
  does without (its guest agent, the sftp-server path, "disable" for
  forwarding), are tolerated;
- anything else that is set is refused, by its path, in one
  :class:`UnsupportedSettings` error naming every such key.

Key names are matched without regard to case, as Go's JSON decoder does
(ContainerSSH's documentation writes ``image``, its Go library sends
``Image``). Kubernetes pod specs pass through with their own spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Top-level keys only ContainerSSH's shape has (``ssh``, ``auth`` and ``log``
#: are pairpod sections too, never overridable: they mark nothing).
_CONTAINERSSH_TOP = frozenset(
    {"configserver", "metrics", "geoip", "audit", "health", "sshproxy", "dockerrun", "kuberun"}
)
_CONTAINERSSH_DOCKER = frozenset({"connection", "execution"})
_CONTAINERSSH_KUBERNETES = frozenset({"connection"})
_CONTAINERSSH_SECURITY = frozenset(
    {
        "defaultmode",
        "forcecommand",
        "env",
        "command",
        "shell",
        "subsystem",
        "forwarding",
        "tty",
        "signal",
        "maxsessions",
    }
)
#: Gateway-wide sections: pairpod never changes them per connection.
_GATEWAY_WIDE = ("ssh", "configserver", "auth", "log", "metrics", "geoip", "audit", "health")
#: What an empty struct marshals to where it is not a zero value.
_EMPTY_MARSHALLED = {("log", "level"): "emerg"}
_MODES = ("enable", "filter", "disable")
_DEFAULT_SFTP = "/usr/lib/openssh/sftp-server"
_PULL = {"always": "always", "ifnotpresent": "if-missing", "never": "never"}


class UnsupportedSettings(ValueError):
    """The answer sets things pairpod cannot honour; the message names each key path."""


def is_zero(value: Any) -> bool:
    """Whether ``value`` is what Go marshals for "not set" (null, false, 0, "", empty)."""
    if value is None or value is False or value == "" or (type(value) in (int, float) and value == 0):
        return True
    if isinstance(value, dict):
        return all(is_zero(item) for item in value.values())
    if isinstance(value, list):
        return all(is_zero(item) for item in value)
    return False


def looks_like_containerssh(config: Mapping[str, Any]) -> bool:
    """Whether a config answer is in ContainerSSH's shape rather than pairpod's."""
    keys = {str(k).lower() for k in config}
    if keys & _CONTAINERSSH_TOP:
        return True
    for section, markers in (
        ("docker", _CONTAINERSSH_DOCKER),
        ("kubernetes", _CONTAINERSSH_KUBERNETES),
        ("security", _CONTAINERSSH_SECURITY),
    ):
        value = config.get(section)
        if isinstance(value, dict) and {str(k).lower() for k in value} & markers:
            return True
    return False


class _Reader:
    """One JSON object of the answer: case-insensitive reads, type checks, leftovers refused."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is not None and not isinstance(data, dict):
            problems.append(f"{path}: expected an object, got {type(data).__name__}")
            data = None
        self._items = {str(k).lower(): (str(k), v) for k, v in (data or {}).items()}
        self._used: set[str] = set()

    def _at(self, name: str) -> str:
        # The key as the answer spelled it, so the message names what was sent.
        name = self._items.get(name.lower(), (name, None))[0]
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str) -> Any:
        """The value of ``name``, or None when absent or zero."""
        key = name.lower()
        self._used.add(key)
        item = self._items.get(key)
        if item is None or is_zero(item[1]):
            return None
        return item[1]

    def sub(self, name: str) -> _Reader:
        return _Reader(self.raw(name), self._at(name), self.problems)

    def typed(self, name: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, bool) and kind is not bool:
            self.problems.append(f"{self._at(name)}: expected {what}")
            return None
        if not isinstance(value, kind):
            self.problems.append(f"{self._at(name)}: expected {what}")
            return None
        return value

    def string(self, name: str) -> str | None:
        return self.typed(name, str, "a string")  # type: ignore[no-any-return]

    def strings(self, name: str) -> list[str] | None:
        value = self.typed(name, list, "a list of strings")
        if value is not None and not all(isinstance(item, str) for item in value):
            self.problems.append(f"{self._at(name)}: expected a list of strings")
            return None
        return value  # type: ignore[no-any-return]

    def number(self, name: str) -> int | float | None:
        return self.typed(name, (int, float), "a number")  # type: ignore[no-any-return]

    def mode(self, name: str) -> str | None:
        value = self.string(name)
        if value is not None and value not in _MODES:
            self.problems.append(f"{self._at(name)}: unknown mode {value!r} (expected {list(_MODES)})")
            return None
        return value

    def refuse(self, name: str, why: str) -> None:
        if self.raw(name) is not None:
            self.problems.append(f"{self._at(name)}: {why}")

    def tolerate(self, name: str, *defaults: Any) -> None:
        """Accept ``name`` when unset or one of ``defaults`` (what pairpod does anyway)."""
        value = self.raw(name)
        if value is not None and value not in defaults:
            self.problems.append(f"{self._at(name)}: only {list(defaults)} can be honoured")

    def finish(self, why: str = "not supported by pairpod") -> None:
        """Refuse every key that is set and was not read."""
        for key, (name, value) in self._items.items():
            if key not in self._used and not is_zero(value):
                if _EMPTY_MARSHALLED.get((self.path, key)) == value:
                    continue
                self.problems.append(f"{self._at(name)}: {why}")


def _put(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def _timeouts(timeouts: _Reader, out: dict[str, Any], section: str, start: str, stop: str) -> None:
    """The start and stop timeouts of a backend; ContainerSSH's others have no pairpod twin."""
    for name, key in ((start, "start"), (stop, "stop")):
        if (seconds := _seconds(timeouts, name)) is not None:
            _put(out, f"{section}.timeouts.{key}", seconds)
    timeouts.finish("pairpod has no such timeout")


def _seconds(reader: _Reader, name: str) -> float | str | None:
    """A Go ``time.Duration`` (nanoseconds) or a duration string, for pairpod's Duration."""
    value = reader.raw(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        reader.problems.append(f"{reader._at(name)}: expected a duration")
        return None
    return value / 1e9 if isinstance(value, int | float) else value


def to_pairpod(config: Mapping[str, Any], *, kubernetes_container: str) -> dict[str, Any]:
    """Map a ContainerSSH ``AppConfig`` answer to a partial pairpod config.

    ``kubernetes_container`` is the name of pairpod's shell container (the
    file's ``kubernetes.container``), which an unnamed console container
    takes. Raises :class:`UnsupportedSettings` naming every key set that
    pairpod cannot honour.
    """
    problems: list[str] = []
    out: dict[str, Any] = {}
    top = _Reader(dict(config), "", problems)
    for section in _GATEWAY_WIDE:
        top.sub(section).finish("a gateway-wide setting; pairpod does not change it per connection")
    backend = top.string("backend")
    if backend in ("docker", "kubernetes"):
        out["backend"] = backend
    elif backend is not None:
        problems.append(f"backend: {backend!r} is not a pairpod backend (docker, kubernetes)")
    _docker(top.sub("docker"), out)
    _kubernetes(top.sub("kubernetes"), out, kubernetes_container)
    _security(top.sub("security"), out)
    top.refuse("sshproxy", "pairpod has no SSH proxy backend")
    top.refuse("dockerrun", "removed in ContainerSSH 0.5; use docker")
    top.refuse("kuberun", "removed in ContainerSSH 0.5; use kubernetes")
    top.finish()
    if problems:
        shown = "; ".join(problems[:12])
        more = f" (and {len(problems) - 12} more)" if len(problems) > 12 else ""
        raise UnsupportedSettings(f"cannot honour {shown}{more}")
    return out


def _docker(docker: _Reader, out: dict[str, Any]) -> None:
    docker.refuse("connection", "the engine is gateway-wide in pairpod (docker.host)")
    execution = docker.sub("execution")
    container = execution.sub("container")
    for name, key in (
        ("image", "image"),
        ("user", "user"),
        ("workingdir", "workdir"),
        ("hostname", "hostname"),
    ):
        if (value := container.string(name)) is not None:
            _put(out, f"docker.{key}", value)
    if (env := container.strings("env")) is not None:
        pairs = {}
        for item in env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                problems_at = f"{container.path}.env"
                container.problems.append(f"{problems_at}: {item[:40]!r} is not NAME=value")
                continue
            pairs[name] = value
        _put(out, "docker.env", pairs)
    labels = container.typed("labels", dict, "an object of strings")
    if labels is not None:
        _put(out, "docker.labels", labels)
    cmd = container.strings("cmd")
    idle = execution.strings("idleCommand")
    if cmd is not None and idle is not None and cmd != idle:
        execution.problems.append(f"{execution.path}: container.cmd and idleCommand differ")
    if (idle or cmd) is not None:
        _put(out, "docker.idle_command", idle or cmd)
    container.finish()
    _host_config(execution.sub("host"), out)
    for name in ("network", "platform"):
        execution.refuse(name, "not supported by pairpod (docker.network names the network)")
    execution.refuse("containername", "pairpod names containers itself")
    execution.refuse("auth", "registry credentials are not supported by pairpod")
    if (mode := execution.string("mode")) is not None:
        _put(out, "docker.mode", mode)
    if (shell := execution.strings("shellCommand")) is not None:
        _put(out, "docker.shell", shell)
    if (policy := execution.string("imagePullPolicy")) is not None:
        if policy.lower() in _PULL:
            _put(out, "docker.pull", _PULL[policy.lower()])
        else:
            execution.problems.append(f"{execution.path}.imagePullPolicy: unknown policy {policy!r}")
    if (expose := execution.typed("exposeAuthMetadataAsEnv", bool, "true or false")) is not None:
        _put(out, "security.expose_auth_metadata_as_env", expose)
    _agent_and_subsystems(execution)
    execution.finish()
    _timeouts(docker.sub("timeouts"), out, "docker", "containerStart", "containerStop")
    docker.finish()


def _agent_and_subsystems(reader: _Reader) -> None:
    # pairpod needs no guest agent: where it would be, or whether it is off,
    # changes nothing. It finds sftp-server itself (ContainerSSH's default
    # path is the first place it looks).
    reader.raw("agentPath")
    reader.raw("disableAgent")
    subsystems = reader.sub("subsystems")
    subsystems.tolerate("sftp", _DEFAULT_SFTP)
    subsystems.finish("pairpod offers only the sftp subsystem")


def _host_config(host: _Reader, out: dict[str, Any]) -> None:
    memory = host.number("memory")
    if memory is not None:
        _put(out, "docker.limits.memory", str(int(memory)))
    swap = host.number("memoryswap")
    if swap is not None and swap != memory:
        host.problems.append(f"{host.path}.memoryswap: pairpod allows no swap (equal to memory only)")
    nano = host.number("nanocpus")
    quota, period = host.number("cpuquota"), host.number("cpuperiod")
    if nano is not None:
        _put(out, "docker.limits.cpus", nano / 1e9)
    elif quota is not None:
        _put(out, "docker.limits.cpus", quota / (period or 100000))
    pids = host.number("pidslimit")
    if pids is not None:
        _put(out, "docker.limits.pids", int(pids) if pids > 0 else None)
    if (network := host.string("networkmode")) is not None:
        _put(out, "docker.network", network)
    for name, key in (("capadd", "cap_add"), ("capdrop", "cap_drop")):
        if (caps := host.strings(name)) is not None:
            _put(out, f"docker.security.{key}", caps)
    if (read_only := host.typed("readonlyrootfs", bool, "true or false")) is not None:
        _put(out, "docker.security.read_only_rootfs", read_only)
    options = host.strings("securityopt")
    if options is not None:
        for option in options:
            if option in ("no-new-privileges", "no-new-privileges:true"):
                _put(out, "docker.security.no_new_privileges", True)
            else:
                host.problems.append(f"{host.path}.securityopt: {option[:40]!r} not supported by pairpod")
    restart = host.sub("restartpolicy")
    restart.tolerate("name", "no")
    restart.finish()
    host.finish()


def _kubernetes(kube: _Reader, out: dict[str, Any], default_container: str) -> None:
    kube.refuse("connection", "the cluster is gateway-wide in pairpod")
    pod = kube.sub("pod")
    metadata = pod.sub("metadata")
    for name in ("labels", "annotations"):
        if (value := metadata.typed(name, dict, "an object of strings")) is not None:
            _put(out, f"kubernetes.pod.metadata.{name}", value)
    metadata.finish("pairpod names pods and sets their namespace itself")
    spec = pod.raw("spec")
    number = pod.number("consoleContainerNumber") or 0
    if spec is not None:
        if not isinstance(spec, dict):
            pod.problems.append(f"{pod.path}.spec: expected an object")
        else:
            _pod_spec(dict(spec), int(number), out, pod, default_container)
    elif number:
        pod.problems.append(f"{pod.path}.consoleContainerNumber: no spec.containers to pick from")
    for name, key in (("idleCommand", "idle_command"), ("shellCommand", "shell")):
        if (value := pod.strings(name)) is not None:
            _put(out, f"kubernetes.{key}", value)
    if (mode := pod.string("mode")) is not None:
        _put(out, "kubernetes.mode", mode)
    pod.refuse("exposeAuthMetadataAsEnv", "use security.expose_auth_metadata_as_env (all or none)")
    pod.refuse("exposeAuthMetadataAsLabels", "not supported by pairpod")
    pod.refuse("exposeAuthMetadataAsAnnotations", "not supported by pairpod")
    _agent_and_subsystems(pod)
    pod.finish()
    _timeouts(kube.sub("timeouts"), out, "kubernetes", "podStart", "podStop")
    kube.finish()


def _pod_spec(
    spec: dict[str, Any], number: int, out: dict[str, Any], pod: _Reader, default_container: str
) -> None:
    containers = spec.get("containers")
    if containers is not None:
        if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
            pod.problems.append(f"{pod.path}.spec.containers: expected a list of objects")
            return
        if containers and not 0 <= number < len(containers):
            pod.problems.append(
                f"{pod.path}.consoleContainerNumber: {number} is not a container of spec.containers"
            )
            return
        containers = [dict(c) for c in containers]
        if containers:
            console = containers[number]
            for name in ("command", "args"):
                if not is_zero(console.get(name)):
                    pod.problems.append(
                        f"{pod.path}.spec.containers[{number}].{name}: pairpod runs its own "
                        "idle command (use idleCommand)"
                    )
            name = console.get("name") or default_container
            console["name"] = name
            _put(out, "kubernetes.container", name)
            if isinstance(console.get("image"), str) and console["image"]:
                _put(out, "kubernetes.image", console["image"])
        spec["containers"] = containers
    _put(out, "kubernetes.pod.spec", spec)


def _security(security: _Reader, out: dict[str, Any]) -> None:
    default = security.mode("defaultMode")

    def mode_of(reader: _Reader) -> str | None:
        return reader.mode("mode") or default

    if (command := security.string("forceCommand")) is not None:
        _put(out, "security.force_command", command)
    env = security.sub("env")
    env_mode, allow, deny = mode_of(env), env.strings("allow"), env.strings("deny")
    if env_mode == "enable":
        _put(out, "security.env_allow", ["*"])
    elif env_mode == "filter":
        _put(out, "security.env_allow", allow or [])
    elif env_mode == "disable":
        _put(out, "security.env_allow", [])
    elif allow is not None:
        env.problems.append(f"{env.path}.allow: only used with mode filter (as in ContainerSSH)")
    if deny is not None:
        _put(out, "security.env_deny", deny)
    env.finish()
    for name, key in (("command", "allow_exec"), ("shell", "allow_shell"), ("tty", "allow_pty")):
        reader = security.sub(name)
        mode = mode_of(reader)
        allowed = reader.strings("allow")
        if mode == "filter" and allowed:
            reader.problems.append(f"{reader.path}.allow: pairpod cannot filter by {name}")
        elif mode is not None:
            _put(out, f"security.{key}", mode == "enable")
        reader.finish()
    subsystem = security.sub("subsystem")
    mode = mode_of(subsystem)
    allowed, denied = subsystem.strings("allow") or [], subsystem.strings("deny") or []
    for name in {*allowed, *denied} - {"sftp"}:
        subsystem.problems.append(f"{subsystem.path}: pairpod has no subsystem {name[:40]!r}")
    names = {"enable": ["sftp"], "filter": [s for s in allowed if s == "sftp"], "disable": []}
    if mode is not None:
        _put(out, "security.subsystems", [s for s in names[mode] if s not in denied])
    elif "sftp" in denied:
        _put(out, "security.subsystems", [])
    subsystem.finish()
    forwarding = security.sub("forwarding")
    for name in (
        "reverseForwardingMode",
        "forwardingMode",
        "socketForwardingMode",
        "socketListenMode",
        "x11ForwardingMode",
    ):
        forwarding.tolerate(name, "disable")  # pairpod never forwards
    forwarding.finish()
    signal = security.sub("signal")
    if mode_of(signal) not in (None, "enable"):  # pairpod always passes signals on
        where = "mode" if signal.raw("mode") is not None else "(defaultMode)"
        signal.problems.append(f"{signal.path}.{where}: pairpod passes every signal on")
    signal.refuse("allow", "pairpod passes every signal on")
    signal.refuse("deny", "pairpod passes every signal on")
    signal.finish()
    sessions = security.number("maxSessions")
    if sessions is not None and sessions > 0:
        _put(out, "ssh.max_sessions", int(sessions))
    elif sessions is not None and sessions != -1:
        security.problems.append(f"{security.path}.maxSessions: expected -1 (no limit) or more than 0")
    security.finish()
