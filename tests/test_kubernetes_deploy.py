"""The deployable manifests: accepted by kubectl and by the API test server, and coherent.

Also: the Role grants exactly what the backend uses, checked against the
requests a real backend session made.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from pairpod.config import cluster_env, merge, parse_listen, validate_config
from testing.kube_apiserver.fixture import KubeApiServerThread, kube_apiserver, kube_namespace
from testing.kube_apiserver.kubetools import KUBECTL
from tests.support.docker_backend import eventually, run
from tests.support.identity import identity
from tests.support.kube_env import kubernetes_config, running_backend

__all__ = ["kube_apiserver", "kube_namespace"]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
CLUSTER = DEPLOY / "cluster"


def _objects(kustomization: Path = DEPLOY) -> dict[str, dict[str, Any]]:
    """The objects ``kubectl apply -k`` would send, by ``Kind/name``."""
    built = subprocess.run(
        [KUBECTL, "kustomize", str(kustomization)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in yaml.safe_load_all(built.stdout) if doc
    }


def _manifests() -> list[Path]:
    """Every manifest file of the base and the overlays (not the kustomizations)."""
    return [p for p in sorted(DEPLOY.rglob("*.yaml")) if p.name != "kustomization.yaml"]


def _kubectl(server: KubeApiServerThread, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(server.kubeconfig), "--cache-dir", str(tmp_path / "cache"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


EXPECTED = {
    "Namespace/pairpod",
    "ServiceAccount/pairpod-gateway",
    "Role/pairpod-gateway",
    "RoleBinding/pairpod-gateway",
    "ConfigMap/pairpod-config",
    "Secret/pairpod-host-keys",
    "Deployment/pairpod-gateway",
    "Service/pairpod",
}


def test_kubectl_accepts_the_manifests_client_side_and_server_side(
    kube_apiserver: KubeApiServerThread, tmp_path: Path
) -> None:
    assert set(_objects()) == EXPECTED
    assert set(_objects(CLUSTER)) == EXPECTED | CLUSTER_ADDS
    for kustomization, count in ((DEPLOY, len(EXPECTED)), (CLUSTER, len(EXPECTED | CLUSTER_ADDS))):
        client = _kubectl(kube_apiserver, tmp_path, "apply", "--dry-run=client", "-k", str(kustomization))
        assert client.returncode == 0, client.stderr
        assert client.stdout.count("(dry run)") == count
    # Server side, namespaced objects need their namespace to exist (as on a cluster).
    created = _kubectl(kube_apiserver, tmp_path, "apply", "-f", str(DEPLOY / "base" / "00-namespace.yaml"))
    assert created.returncode == 0, created.stderr
    try:
        for kustomization, count in ((DEPLOY, len(EXPECTED)), (CLUSTER, len(EXPECTED | CLUSTER_ADDS))):
            server = _kubectl(
                kube_apiserver,
                tmp_path,
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "-k",
                str(kustomization),
            )
            assert server.returncode == 0, server.stderr
            assert server.stdout.count("(server dry run)") == count
            assert "Warning" not in server.stderr, server.stderr
    finally:
        kube_apiserver.delete_namespace("pairpod")


CLUSTER_ADDS = {
    "Service/pairpod-replicas",
    "Service/pairpod-redis",
    "StatefulSet/pairpod-redis",
    "PodDisruptionBudget/pairpod-gateway",
    "Secret/pairpod-cluster",
    "NetworkPolicy/pairpod-redis",
    "NetworkPolicy/pairpod-gateway",
}


def test_the_pieces_fit_together() -> None:
    objects = _objects()
    config_map = objects["ConfigMap/pairpod-config"]
    config = validate_config(yaml.safe_load(config_map["data"]["pairpod.yaml"]), "configmap")
    assert config.backend == "kubernetes"
    assert config.kubernetes.kubeconfig is None  # in-cluster credentials
    assert config.kubernetes.namespace == "pairpod"
    deployment = objects["Deployment/pairpod-gateway"]
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    gateway = spec["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The config and its authorized_keys come from the ConfigMap's keys.
    assert volumes["config"]["configMap"]["name"] == "pairpod-config"
    config_path = Path(mounts["config"]) / "pairpod.yaml"
    assert gateway["args"] == ["serve", "--config", str(config_path)]
    assert config.auth.authorized_keys == Path(mounts["config"]) / "authorized_keys"
    assert "authorized_keys" in config_map["data"]
    # The host key comes from the Secret, readable by the gateway's group only.
    host_keys = volumes["host-keys"]["secret"]
    assert host_keys["secretName"] == "pairpod-host-keys"
    assert config.host_keys == [Path(mounts["host-keys"]) / host_keys["items"][0]["path"]]
    assert host_keys["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    # The port: config, container, Service.
    assert config.listen_address == ("0.0.0.0", 2222)  # noqa: S104 - in its own pod
    assert gateway["ports"] == [
        {"name": "ssh", "containerPort": 2222, "protocol": "TCP"},
        {"name": "admin", "containerPort": 9090, "protocol": "TCP"},
    ]
    # The probes ask the admin listener, which the config opens on that port (never the SSH one).
    assert config.admin.listen is not None and parse_listen(config.admin.listen)[1] == 9090
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # pairpod admin (through kubectl exec) finds the socket in a writable place.
    assert config.admin.socket is not None and config.admin.socket.parent == Path(mounts["tmp"])
    service = objects["Service/pairpod"]["spec"]
    assert service["ports"][0]["port"] == 2222 and service["ports"][0]["targetPort"] == "ssh"
    assert service["selector"] == pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    # Hardened, with the service account the Role is bound to.
    assert spec["serviceAccountName"] == "pairpod-gateway"
    binding = objects["RoleBinding/pairpod-gateway"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pairpod-gateway", "namespace": "pairpod"}
    ]
    assert binding["roleRef"]["name"] == "pairpod-gateway"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert gateway["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in gateway["env"]}
    assert env == {
        "PAIRPOD_POD_NAME": "metadata.name",
        "PAIRPOD_POD_NAMESPACE": "metadata.namespace",
        "PAIRPOD_POD_UID": "metadata.uid",
    }
    # Re-applying the placeholder must never clobber a real host key: it sets no data.
    secret = objects["Secret/pairpod-host-keys"]
    assert "data" not in secret and "stringData" not in secret


def _started_env(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet gives it in a pod at 10.1.2.3.

    ``$(NAME)`` in a value is expanded from the entries before it, as Kubernetes does.
    """
    fields = {"status.podIP": "10.1.2.3", "metadata.name": "pod-a", "metadata.namespace": "pairpod"}
    env: dict[str, str] = {}
    for entry in container["env"]:
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], entry["value"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
        elif "fieldRef" in source:
            env[entry["name"]] = fields.get(source["fieldRef"]["fieldPath"], "x")
    return env


def test_the_cluster_overlay_fits_together() -> None:
    objects = _objects(CLUSTER)
    deployment = objects["Deployment/pairpod-gateway"]["spec"]
    pod = deployment["template"]
    labels = pod["metadata"]["labels"]
    gateway = pod["spec"]["containers"][0]
    assert deployment["replicas"] == 3
    # Spread over nodes and zones; at most one replica away at a time.
    spread = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"]["matchLabels"] == labels and c["maxSkew"] == 1 for c in spread)
    pdb = objects["PodDisruptionBudget/pairpod-gateway"]["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}

    # The config a replica runs with: the ConfigMap's file and the cluster keys of its environment.
    passwords = {"pairpod-cluster": {"secret": "s" * 64, "redis-password": "p" * 64}}
    assert "data" not in objects["Secret/pairpod-cluster"]  # a placeholder never clobbers the real one
    env = _started_env(gateway, passwords)
    file = yaml.safe_load(objects["ConfigMap/pairpod-config"]["data"]["pairpod.yaml"])
    config = validate_config(merge(file, cluster_env(env)), "overlay")
    assert config.cluster.secret == "s" * 64
    advertised_host, advertised_port = parse_listen(config.cluster.advertise or "")
    assert advertised_host == "10.1.2.3"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert advertised_port == ports["replica"] != ports["ssh"]
    # The replica port: in the headless Service of the replicas, never in the users' one.
    replicas = objects["Service/pairpod-replicas"]["spec"]
    assert replicas["clusterIP"] == "None" and replicas["selector"] == labels
    assert replicas["ports"] == [
        {"name": "replica", "port": advertised_port, "targetPort": "replica", "protocol": "TCP"}
    ]
    assert [p["targetPort"] for p in objects["Service/pairpod"]["spec"]["ports"]] == ["ssh"]

    # Redis: the URL names its Service and port, with the password Redis is started with.
    url = urlsplit(config.cluster.redis or "")
    redis_service = objects["Service/pairpod-redis"]["spec"]
    redis_set = objects["StatefulSet/pairpod-redis"]["spec"]
    redis_pod = redis_set["template"]
    assert (url.hostname, url.port) == ("pairpod-redis", redis_service["ports"][0]["port"])
    assert redis_set["serviceName"] == "pairpod-redis" and redis_set["replicas"] == 1
    assert (
        redis_service["selector"] == redis_pod["metadata"]["labels"] == redis_set["selector"]["matchLabels"]
    )
    assert redis_service["selector"] != labels
    redis = redis_pod["spec"]["containers"][0]
    args = [
        re.sub(r"\$\((\w+)\)", lambda m: _started_env(redis, passwords)[m.group(1)], a) for a in redis["args"]
    ]
    assert args[args.index("--requirepass") + 1] == url.password == "p" * 64
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    # Users' pods (same namespace) reach neither Redis nor the replica port.
    from_gateways = [{"podSelector": {"matchLabels": labels}}]
    redis_policy = objects["NetworkPolicy/pairpod-redis"]["spec"]
    assert redis_policy["podSelector"]["matchLabels"] == redis_service["selector"]
    assert redis_policy["ingress"] == [
        {"from": from_gateways, "ports": [{"port": "redis", "protocol": "TCP"}]}
    ]
    gateway_policy = objects["NetworkPolicy/pairpod-gateway"]["spec"]
    assert gateway_policy["podSelector"]["matchLabels"] == labels
    open_to_all = [rule for rule in gateway_policy["ingress"] if "from" not in rule]
    assert {p["port"] for rule in open_to_all for p in rule["ports"]} == {"ssh", "admin"}
    assert {"from": from_gateways, "ports": [{"port": "replica", "protocol": "TCP"}]} in gateway_policy[
        "ingress"
    ]


def _authorisation(method: str, path_qs: str, namespace: str) -> tuple[str, str] | None:
    """(resource, verb) as the API server's authoriser sees a request; None outside the namespace."""
    url = urlsplit(path_qs)
    prefix = f"/api/v1/namespaces/{namespace}/pods"
    if not url.path.startswith(prefix):
        return None
    rest = [part for part in url.path[len(prefix) :].split("/") if part]
    query = parse_qs(url.query)
    if not rest:
        if method == "GET":
            return ("pods", "watch" if query.get("watch", [""])[0].lower() in ("true", "1") else "list")
        return ("pods", {"POST": "create", "DELETE": "deletecollection"}[method])
    if len(rest) == 2:
        # The exec upgrade: "get" before Kubernetes 1.31, "create" since.
        return (f"pods/{rest[1]}", "create")
    return ("pods", {"GET": "get", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}[method])


async def test_the_role_grants_exactly_what_the_backend_uses(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    async def forget() -> None:
        assert kube_apiserver.server is not None
        kube_apiserver.server.requests.clear()

    async def served() -> list[tuple[str, str]]:
        assert kube_apiserver.server is not None
        return [(r.method, r.path_qs) for r in kube_apiserver.server.requests]

    await kube_apiserver.acall(forget())
    # Everything the backend does: check the template, reap, fill the pool, hand
    # out (and label) a pod, start pods, exec, signal, kill, delete.
    config = kubernetes_config(kube_apiserver, kube_namespace, image="busybox", warm_pool=1)
    async with running_backend(config) as backend:
        await eventually(lambda: backend.pool_size() == 1, "the pool to fill", 60)
        env = await backend.open(identity(config))
        out, _, _ = await run(env, "echo used")
        assert out == b"used\n"
        await env.close()
    requests = await kube_apiserver.acall(served())
    used = {_authorisation(method, path, kube_namespace) for method, path in requests}
    assert None not in used, [r for r in requests if _authorisation(*r, kube_namespace) is None]

    role = _objects()["Role/pairpod-gateway"]
    granted = {
        (resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]
    }
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert used <= granted
    # Nothing more, but for the exec upgrade's verb on clusters before 1.31.
    assert granted - used == {("pods/exec", "get")}


def test_the_walkthrough_names_every_manifest() -> None:
    text = (DEPLOY / "README.md").read_text()
    for path in _manifests():
        assert str(path.relative_to(DEPLOY)) in text, path.name
