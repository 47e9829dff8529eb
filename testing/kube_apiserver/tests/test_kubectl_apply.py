"""``kubectl apply`` of ordinary manifests: client and server dry runs, create, update."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from ..kubetools import Kubectl


def _manifests(namespace: str) -> list[dict[str, Any]]:
    """What a gateway deployment is made of, all in one namespace."""
    meta = {"namespace": namespace}
    labels = {"app": "gateway"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "gw", **meta},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "gw", **meta},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["create", "get", "list", "watch", "delete"],
                },
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "gw", **meta},
            "subjects": [{"kind": "ServiceAccount", "name": "gw", "namespace": namespace}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gw"},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "gw-config", **meta},
            "data": {"config.yaml": "backend: kubernetes\n"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "gw-keys", **meta},
            "type": "Opaque",
            "stringData": {"host_key": "not really a key"},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gw", **meta},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "gw",
                        "containers": [
                            {"name": "gateway", "image": "gateway:dev", "ports": [{"containerPort": 2222}]}
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "gw", **meta},
            "spec": {"selector": labels, "ports": [{"port": 2222, "targetPort": 2222}]},
        },
    ]


def _as_list(items: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


EXPECTED = [
    "serviceaccount/gw",
    "role.rbac.authorization.k8s.io/gw",
    "rolebinding.rbac.authorization.k8s.io/gw",
    "configmap/gw-config",
    "secret/gw-keys",
    "deployment.apps/gw",
    "service/gw",
]


def test_dry_runs_store_nothing(kubectl: Kubectl, kube_namespace: str) -> None:
    manifests = _as_list(_manifests(kube_namespace))
    client = kubectl.run("apply", "--dry-run=client", "-f", "-", input=manifests)
    assert client.stdout.splitlines() == [f"{name} created (dry run)" for name in EXPECTED]
    server = kubectl.run("apply", "--dry-run=server", "-f", "-", input=manifests)
    assert server.stdout.splitlines() == [f"{name} created (server dry run)" for name in EXPECTED]
    listing = kubectl.run("get", "deployments,services,roles,rolebindings,secrets", "-o", "name")
    assert listing.stdout == ""
    # The server really defaulted and validated what it did not store.
    out = kubectl.json(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(_manifests(kube_namespace)[-1])
    )
    assert out["spec"]["type"] == "ClusterIP"
    assert out["spec"]["clusterIP"]


def test_server_dry_run_rejects_what_the_server_would(kubectl: Kubectl, kube_namespace: str) -> None:
    bad = _manifests(kube_namespace)[5]
    bad["spec"]["selector"]["matchLabels"] = {"app": "other"}
    out = kubectl.run("apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode == 1
    assert "`selector` does not match template `labels`" in out.stderr
    # A namespace created in the same dry run does not exist for what follows.
    fresh = f"ns-{uuid.uuid4().hex[:8]}"
    items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": fresh}}, *_manifests(fresh)[:1]]
    out = kubectl.run("apply", "--dry-run=server", "-f", "-", input=_as_list(items), check=False)
    assert f"namespace/{fresh} created (server dry run)" in out.stdout
    assert f'namespaces "{fresh}" not found' in out.stderr


def test_apply_creates_then_updates(kubectl: Kubectl, kube_namespace: str) -> None:
    manifests = _manifests(kube_namespace)
    out = kubectl.run("apply", "-f", "-", input=_as_list(manifests))
    assert out.stdout.splitlines() == [f"{name} created" for name in EXPECTED]
    again = kubectl.run("apply", "-f", "-", input=_as_list(manifests[:4]))
    assert again.stdout.splitlines() == [f"{name} unchanged" for name in EXPECTED[:4]]

    secret = kubectl.json("get", "secret", "gw-keys")
    assert base64.b64decode(secret["data"]["host_key"]) == b"not really a key"
    deployment = kubectl.json("get", "deployment", "gw")
    assert deployment["spec"]["template"]["spec"]["restartPolicy"] == "Always"  # defaulted

    config = manifests[3]
    config["data"] = {"config.yaml": "backend: docker\n", "extra": "1"}
    config["metadata"]["labels"] = {"tier": "gw"}
    before = kubectl.json("get", "configmap", "gw-config")["metadata"]["resourceVersion"]
    out = kubectl.run("apply", "-f", "-", input=json.dumps(config))
    assert out.stdout.strip() == "configmap/gw-config configured"
    after = kubectl.json("get", "configmap", "gw-config")
    assert after["data"] == config["data"]
    assert after["metadata"]["labels"] == {"tier": "gw"}
    assert int(after["metadata"]["resourceVersion"]) > int(before)

    # Dropping a key from the manifest removes it (the three-way patch deletes it).
    del config["data"]["extra"]
    kubectl.run("apply", "-f", "-", input=json.dumps(config))
    assert kubectl.json("get", "configmap", "gw-config")["data"] == config["data"]

    # A container list is merged by name, not replaced.
    deployment_manifest = manifests[5]
    deployment_manifest["spec"]["template"]["spec"]["containers"][0]["image"] = "gateway:v2"
    kubectl.run("apply", "-f", "-", input=json.dumps(deployment_manifest))
    [container] = kubectl.json("get", "deployment", "gw")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "gateway:v2"
    assert container["ports"] == [{"containerPort": 2222, "protocol": "TCP"}]


def test_server_side_apply(kubectl: Kubectl, kube_namespace: str) -> None:
    config = _manifests(kube_namespace)[3]
    out = kubectl.run("apply", "--server-side", "-f", "-", input=json.dumps(config))
    assert out.stdout.strip() == "configmap/gw-config serverside-applied"
    config["data"]["more"] = "yes"
    kubectl.run("apply", "--server-side", "-f", "-", input=json.dumps(config))
    assert kubectl.json("get", "configmap", "gw-config")["data"]["more"] == "yes"


def test_delete_namespace_with_contents(kubectl: Kubectl) -> None:
    fresh = f"ns-{uuid.uuid4().hex[:8]}"
    items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": fresh}}, *_manifests(fresh)]
    kubectl.run("apply", "-f", "-", input=_as_list(items))
    assert kubectl.run("get", "sa", "-n", fresh, "-o", "name").stdout.split() == [
        "serviceaccount/default",
        "serviceaccount/gw",
    ]
    out = kubectl.run("delete", "namespace", fresh)
    assert out.stdout.strip() == f'namespace "{fresh}" deleted'
    assert kubectl.run("get", "namespace", fresh, check=False).returncode == 1
    assert kubectl.run("get", "all", "-n", fresh, "-o", "name").stdout == ""
    refused = kubectl.run("delete", "namespace", "default", check=False)
    assert "this namespace may not be deleted" in refused.stderr
