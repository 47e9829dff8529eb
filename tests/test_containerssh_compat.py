"""ContainerSSH compatibility: its config answers mapped, its auth semantics, through a gateway.

The webhook peer (tests/support/containerssh_peer.py) reads every request
strictly by ContainerSSH's field names; config answers are built the way its
Go library marshals them (every section, empty ones included).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pairpod.auth.webhook import WebhookError, apply_overrides
from pairpod.config import Config, validate_config
from testing.kube_apiserver.fixture import kube_apiserver, kube_namespace
from tests.conftest import MakeGateway
from tests.support.containerssh_peer import (
    DOCKER_CONTAINER_CONFIG,
    ContainerSSHPeer,
    containerssh_peer,
    go_config_answer,
)
from tests.support.gateway import ClientKey, GatewayThread

__all__ = ["containerssh_peer", "kube_apiserver", "kube_namespace"]  # fixtures

BASE = validate_config({"security": {"env_allow": ["LANG"]}}, "test")


def mapped(answer: dict[str, Any], base: Config = BASE, shape: str = "auto") -> Config:
    return apply_overrides(base, answer.get("config", answer), shape)


# -- the config answer: what maps where ---------------------------------------------------


def test_the_issue_answer_sets_the_image() -> None:
    config = mapped({"config": {"docker": {"execution": {"container": {"image": "alpine:3.20"}}}}})
    assert config.docker.image == "alpine:3.20"
    assert config.docker.limits == BASE.docker.limits  # nothing else moved


def test_a_go_library_answer_with_every_section_empty_changes_nothing() -> None:
    assert mapped(go_config_answer()) == BASE


def test_a_go_library_answer_maps_container_host_and_security() -> None:
    container = {
        **DOCKER_CONTAINER_CONFIG,
        "Image": "registry.example/tools:1",
        "Env": ["TEAM=tools", "MODE=a=b"],
        "User": "1000",
        "WorkingDir": "/work",
        "Cmd": ["/bin/sh", "-c", "sleep infinity"],
    }
    answer = go_config_answer(
        **{
            "backend": "docker",
            "docker.execution.container": container,
            "docker.execution.host": {
                "Memory": 268435456,
                "NanoCpus": 500000000,
                "PidsLimit": 64,
                "CapDrop": ["ALL"],
                "RestartPolicy": {"Name": "", "MaximumRetryCount": 0},
                "ConsoleSize": [0, 0],
                "Privileged": False,
            },
            "docker.execution.imagePullPolicy": "Never",
            "docker.execution.exposeAuthMetadataAsEnv": True,
            "docker.timeouts.containerStart": 30_000_000_000,
            "security.env": {"mode": "filter", "allow": ["LANG", "GIT_PROTOCOL"], "deny": ["LD_*"]},
            "security.maxSessions": 4,
            "security.tty": {"mode": "disable"},
        }
    )
    config = mapped(answer)
    docker = config.docker
    assert (docker.image, docker.user, docker.workdir, docker.pull) == (
        "registry.example/tools:1",
        "1000",
        "/work",
        "never",
    )
    assert docker.env == {"TEAM": "tools", "MODE": "a=b"}
    assert docker.idle_command == ["/bin/sh", "-c", "sleep infinity"]
    assert (docker.limits.memory, docker.limits.cpus, docker.limits.pids) == ("268435456", 0.5, 64)
    assert docker.security.cap_drop == ["ALL"]
    assert docker.timeouts.start == 30.0
    assert config.security.env_allow == ["LANG", "GIT_PROTOCOL"]
    assert config.security.env_deny == ["LD_*"]
    assert config.security.expose_auth_metadata_as_env is True
    assert config.security.allow_pty is False
    assert config.ssh.max_sessions == 4
    assert config.auth == BASE.auth and config.listen == BASE.listen


def test_default_mode_applies_where_no_mode_is_set() -> None:
    answer = go_config_answer(
        **{
            "security.defaultMode": "disable",
            "security.signal": {"mode": "enable", "allow": None, "deny": None},
            "security.shell": {"mode": "enable"},
        }
    )
    security = mapped(answer).security
    assert (security.allow_exec, security.allow_shell, security.allow_pty) == (False, True, False)
    assert (security.env_allow, security.subsystems) == ([], [])


def test_a_kubernetes_answer_maps_the_console_container() -> None:
    answer = go_config_answer(
        **{
            "backend": "kubernetes",
            "kubernetes.pod.metadata": {"creationTimestamp": None, "labels": {"team": "tools"}},
            "kubernetes.pod.spec": {
                "containers": [
                    {"name": "sidecar", "image": "proxy:1"},
                    {"name": "work", "image": "tools:2", "env": [{"name": "A", "value": "1"}]},
                ],
                "nodeSelector": {"disk": "ssd"},
            },
            "kubernetes.pod.consoleContainerNumber": 1,
            "kubernetes.timeouts.podStart": 90_000_000_000,
        }
    )
    config = mapped(answer)
    kube = config.kubernetes
    assert (config.backend, kube.image, kube.container) == ("kubernetes", "tools:2", "work")
    assert kube.pod["metadata"] == {"labels": {"team": "tools"}}
    assert kube.pod["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert [c["name"] for c in kube.pod["spec"]["containers"]] == ["sidecar", "work"]
    assert kube.timeouts.start == 90.0


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"ssh.banner": "hello"}, "ssh.banner: a gateway-wide setting"),
        ({"log.level": "debug"}, "log.level: a gateway-wide setting"),
        ({"docker.connection.host": "tcp://10.0.0.1:2375"}, "docker.connection"),
        ({"docker.execution.host": {"Privileged": True}}, "docker.execution.host.Privileged"),
        ({"docker.execution.host": {"Binds": ["/:/host"]}}, "docker.execution.host.Binds"),
        (
            {"docker.execution.container": {**DOCKER_CONTAINER_CONFIG, "Entrypoint": ["/x"]}},
            "docker.execution.container.Entrypoint",
        ),
        ({"docker.execution.subsystems": {"sftp": "/opt/sftp"}}, "docker.execution.subsystems.sftp"),
        ({"security.command": {"mode": "filter", "allow": ["ls"]}}, "security.command.allow"),
        ({"security.forwarding": {"forwardingMode": "enable"}}, "security.forwarding.forwardingMode"),
        ({"security.signal": {"mode": "disable"}}, "security.signal.mode"),
        ({"security.defaultMode": "disable"}, "security.signal.(defaultMode)"),
        ({"backend": "sshproxy"}, "backend"),
        ({"sshproxy.server": "10.0.0.2"}, "sshproxy"),
        (
            {"kubernetes.pod.exposeAuthMetadataAsEnv": {"team": "TEAM"}},
            "kubernetes.pod.exposeAuthMetadataAsEnv",
        ),
        ({"kubernetes.pod.metadata": {"namespace": "other"}}, "kubernetes.pod.metadata.namespace"),
    ],
)
def test_what_pairpod_cannot_honour_is_refused_by_name(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(WebhookError, match="ContainerSSH config") as caught:
        mapped(go_config_answer(**changes))
    assert named in str(caught.value)


def test_every_refused_key_is_named_at_once() -> None:
    answer = go_config_answer(**{"ssh.banner": "x", "docker.execution.containername": "c"})
    with pytest.raises(WebhookError) as caught:
        mapped(answer)
    assert "ssh.banner" in str(caught.value) and "docker.execution.containername" in str(caught.value)


def test_the_format_switch_overrides_detection() -> None:
    answer = {"docker": {"execution": {"container": {"image": "alpine:3.20"}}}}
    with pytest.raises(WebhookError, match=r"docker\.execution: unknown key"):
        mapped(answer, shape="pairpod")
    with pytest.raises(WebhookError, match=r"docker\.image: not supported by pairpod"):
        mapped({"docker": {"image": "alpine:3.20"}}, shape="containerssh")
    assert mapped({"docker": {"image": "alpine:3.20"}}).docker.image == "alpine:3.20"


def test_a_wrong_type_is_refused_by_name() -> None:
    answer = go_config_answer(**{"docker.execution.container": {"Image": 7}})
    with pytest.raises(WebhookError, match=r"docker\.execution\.container\.Image: expected a string"):
        mapped(answer)


# -- through a gateway (local backend) --------------------------------------------------------


def key_line(key: ClientKey) -> str:
    return " ".join(key.public_line.split()[:2])


async def ssh(
    gw: GatewayThread, user: str, command: str, key: ClientKey, options: tuple[str, ...] = ()
) -> tuple[int, str, str]:
    argv = gw.ssh_argv(command, user=user, key=key, options=options)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_auth_answer_environment_metadata_and_files_reach_the_session(
    make_gateway: MakeGateway, peer: ContainerSSHPeer, tmp_path: Path
) -> None:
    key = ClientKey.create(tmp_path / "webhook-key")
    secret_file, plain_file = tmp_path / "home" / "secret.txt", tmp_path / "home" / "conf" / "a.cfg"
    for user in ("ann", "bob"):
        peer.pubkeys[user] = {key_line(key)}
        peer.auth_answers[user] = {
            "authenticatedUsername": user,
            "metadata": {
                "TEAM": {"value": "red", "sensitive": False},
                "TOKEN": {"value": "tok-42", "sensitive": True},
            },
            "environment": {"EDITOR": {"value": "vim", "sensitive": False}},
            "files": {
                str(secret_file): {"value": b64(b"s3cret\n"), "sensitive": True},
                str(plain_file): {"value": b64(b"\x00binary\xff"), "sensitive": False},
            },
        }
    # bob's config answer turns the metadata on, the way ContainerSSH's is switched.
    peer.config_answers["bob"] = go_config_answer(**{"docker.execution.exposeAuthMetadataAsEnv": True})
    gw = await asyncio.to_thread(
        make_gateway,
        {"auth": {"webhook": {"url": peer.url}, "config_webhook": {"url": f"{peer.url}/config"}}},
    )
    probe = (
        f'echo "team=$TEAM token=$TOKEN editor=$EDITOR"; stat -c "%a %u" {secret_file} {plain_file}; '
        f"cat {secret_file}; od -An -c {plain_file}"
    )
    code, out, err = await ssh(gw, "ann", probe, key)
    assert code == 0, err
    uid = os.getuid()
    lines = out.splitlines()
    assert lines[:4] == ["team= token= editor=vim", f"600 {uid}", f"600 {uid}", "s3cret"]
    assert lines[4].split() == ["\\0", "b", "i", "n", "a", "r", "y", "377"]
    code, out, err = await ssh(gw, "bob", 'echo "team=$TEAM token=$TOKEN"', key)
    assert (code, out) == (0, "team=red token=\n"), err
    assert peer.problems == []
    [config_request, *_] = peer.requests_to("/config")
    # The config webhook gets the files and metadata, but nothing sensitive.
    assert set(config_request["files"]) == {str(plain_file)}
    assert base64.b64decode(config_request["files"][str(plain_file)]["value"]) == b"\x00binary\xff"
    assert set(config_request["metadata"]) == {"TEAM"}
    assert config_request["authenticatedUsername"] == "ann"


async def test_a_go_library_config_answer_changes_the_session(
    make_gateway: MakeGateway, peer: ContainerSSHPeer, tmp_path: Path
) -> None:
    key = ClientKey.create(tmp_path / "webhook-key")
    peer.pubkeys["cid"] = {key_line(key)}
    peer.config_answers["cid"] = go_config_answer(
        **{
            "security.env": {"mode": "", "allow": None, "deny": ["LC_*"]},
            "security.maxSessions": 1,
        }
    )
    gw = await asyncio.to_thread(
        make_gateway,
        {
            "auth": {"webhook": {"url": peer.url}, "config_webhook": {"url": f"{peer.url}/config"}},
            "security": {"env_allow": ["LANG", "LC_*"]},
        },
    )
    code, out, err = await ssh(
        gw, "cid", 'echo "lang=$LANG lc=$LC_TIME"', key, ("-o", "SetEnv=LANG=C.UTF-8 LC_TIME=C")
    )
    assert (code, out) == (0, "lang=C.UTF-8 lc=\n"), err
    assert peer.problems == []


async def test_a_refused_config_answer_denies_the_login(
    make_gateway: MakeGateway, peer: ContainerSSHPeer, tmp_path: Path
) -> None:
    key = ClientKey.create(tmp_path / "webhook-key")
    peer.pubkeys["dee"] = {key_line(key)}
    peer.config_answers["dee"] = go_config_answer(**{"docker.execution.host": {"Privileged": True}})
    gw = await asyncio.to_thread(
        make_gateway,
        {"auth": {"webhook": {"url": peer.url}, "config_webhook": {"url": f"{peer.url}/config"}}},
    )
    code, out, _ = await ssh(gw, "dee", "echo in", key)
    assert (code, out) == (255, "")


async def test_authz_can_refuse_and_add_to_a_login(
    make_gateway: MakeGateway, peer: ContainerSSHPeer, tmp_path: Path
) -> None:
    key = ClientKey.create(tmp_path / "webhook-key")
    for user in ("eve", "fay"):
        peer.pubkeys[user] = {key_line(key)}
    peer.authz["fay"] = {"success": True, "environment": {"GRANTED": {"value": "yes", "sensitive": False}}}
    gw = await asyncio.to_thread(make_gateway, {"auth": {"webhook": {"url": peer.url, "authz": True}}})
    assert (await ssh(gw, "eve", "echo in", key))[:2] == (255, "")
    code, out, err = await ssh(gw, "fay", 'echo "granted=$GRANTED"', key)
    assert (code, out) == (0, "granted=yes\n"), err
    assert [body["authenticatedUsername"] for body in peer.requests_to("/authz")] == ["eve", "fay"]
    assert peer.problems == []


async def test_a_certificate_login_is_sent_to_the_webhook_as_its_line(
    make_gateway: MakeGateway, peer: ContainerSSHPeer, tmp_path: Path
) -> None:
    key = ClientKey.create(tmp_path / "user")
    ca = ClientKey.create(tmp_path / "ca", "ca")
    await asyncio.to_thread(
        subprocess.run,
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(ca.private),
            "-I",
            "gus-cert",
            "-n",
            "gus",
            "-V",
            "-5m:+1h",
            f"{key.private}.pub",
        ],
        check=True,
    )
    cert = Path(f"{key.private}-cert.pub")
    cert_line = " ".join(cert.read_text().split()[:2])  # noqa: ASYNC240 - a small local file
    assert cert_line.startswith("ssh-ed25519-cert-v01@openssh.com ")
    peer.pubkeys["gus"] = {cert_line}
    gw = await asyncio.to_thread(make_gateway, {"auth": {"webhook": {"url": peer.url}}})
    # Only the certificate's line is known to the webhook: the plain key is refused.
    code, out, err = await ssh(gw, "gus", "echo cert-in", key, ("-o", f"CertificateFile={cert}"))
    assert (code, out) == (0, "cert-in\n"), err
    assert cert_line in [body["publicKey"] for body in peer.requests_to("/pubkey")]
    assert peer.problems == []


# -- through a gateway (Docker backend) ------------------------------------------------------


async def test_docker_a_containerssh_answer_changes_one_users_image_and_files_arrive_0600(
    make_gateway: MakeGateway, peer: ContainerSSHPeer, tmp_path: Path
) -> None:
    from tests.support.docker_env import docker_overrides
    from tests.support.images import busybox_image

    overrides = docker_overrides(image="debian")
    key = ClientKey.create(tmp_path / "webhook-key")
    for user in ("hal", "ida"):
        peer.pubkeys[user] = {key_line(key)}
        peer.auth_answers[user] = {
            "files": {"/tmp/pp/token": {"value": b64(b"t0ken\n"), "sensitive": True}},
        }
    container = {
        **DOCKER_CONTAINER_CONFIG,
        "Image": busybox_image(),
        "Env": ["HAL_TEAM=tools"],
        "User": "1000",
    }
    peer.config_answers["hal"] = go_config_answer(
        **{
            "backend": "docker",
            "docker.execution.container": container,
            "docker.execution.imagePullPolicy": "Never",
        }
    )
    gw = await asyncio.to_thread(
        make_gateway,
        {
            **overrides,
            "auth": {"webhook": {"url": peer.url}, "config_webhook": {"url": f"{peer.url}/config"}},
        },
    )
    probe = (
        "if [ -e /etc/debian_version ]; then echo debian; else echo other; fi; "
        'echo "team=$HAL_TEAM"; stat -c "%a %u" /tmp/pp/token; cat /tmp/pp/token'
    )
    results = await asyncio.gather(ssh(gw, "hal", probe, key), ssh(gw, "ida", probe, key))
    assert [(code, out) for code, out, _ in results] == [
        (0, "other\nteam=tools\n600 1000\nt0ken\n"),
        (0, "debian\nteam=\n600 0\nt0ken\n"),
    ], results
    assert peer.problems == []


async def test_docker_session_mode_cannot_take_files_and_says_so(
    make_gateway: MakeGateway, peer: ContainerSSHPeer, tmp_path: Path
) -> None:
    from tests.support.docker_env import docker_overrides

    key = ClientKey.create(tmp_path / "webhook-key")
    peer.pubkeys["jo"] = {key_line(key)}
    peer.auth_answers["jo"] = {"files": {"/tmp/x": {"value": b64(b"x"), "sensitive": False}}}
    gw = await asyncio.to_thread(
        make_gateway,
        {**docker_overrides(mode="session", image="busybox"), "auth": {"webhook": {"url": peer.url}}},
    )
    code, out, err = await ssh(gw, "jo", "echo in", key)
    assert code != 0 and out == ""
    assert "cannot place the login's files in the environment" in err


# -- through a gateway (Kubernetes backend, on the API test server) ---------------------------


async def test_kubernetes_a_containerssh_pod_spec_changes_one_users_image(
    kube_namespace: str,
    make_gateway: MakeGateway,
    peer: ContainerSSHPeer,
    tmp_path: Path,
    kube_apiserver: Any,
) -> None:
    from tests.support.images import busybox_image
    from tests.support.kube_env import kubernetes_overrides

    key = ClientKey.create(tmp_path / "webhook-key")
    for user in ("kay", "lou"):
        peer.pubkeys[user] = {key_line(key)}
    spec = {
        "containers": [
            {"name": "shell", "image": busybox_image(), "env": [{"name": "KAY_TEAM", "value": "ops"}]}
        ]
    }
    peer.config_answers["kay"] = go_config_answer(**{"backend": "kubernetes", "kubernetes.pod.spec": spec})
    overrides = kubernetes_overrides(kube_apiserver, kube_namespace)
    gw = await asyncio.to_thread(
        make_gateway,
        {
            **overrides,
            "auth": {"webhook": {"url": peer.url}, "config_webhook": {"url": f"{peer.url}/config"}},
        },
    )
    probe = 'if [ -e /etc/debian_version ]; then echo debian; else echo other; fi; echo "team=$KAY_TEAM"'
    results = await asyncio.gather(ssh(gw, "kay", probe, key), ssh(gw, "lou", probe, key))
    assert [(code, out) for code, out, _ in results] == [
        (0, "other\nteam=ops\n"),
        (0, "debian\nteam=\n"),
    ], results
    assert peer.problems == []
