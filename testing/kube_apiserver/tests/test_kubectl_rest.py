"""The REST side of the test server, checked with the real kubectl.

kubectl is the referee here: if it discovers, creates, lists, filters and
deletes against this server as it does against a cluster, the server behaves
like an API server rather than like our own expectations of one.
"""

from __future__ import annotations

import json
import re
import subprocess

from ..kubetools import SERVE, Kubectl, pod_manifest


def _create(kubectl: Kubectl, manifest: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return kubectl.run("create", "-f", "-", input=json.dumps(manifest))


def test_version_and_discovery(kubectl: Kubectl) -> None:
    version = json.loads(kubectl.run("version", "-o", "json").stdout)
    assert version["serverVersion"]["major"] == "1"
    resources = kubectl.run("api-resources", "--no-headers").stdout
    names = {line.split()[0] for line in resources.splitlines()}
    assert {
        "pods",
        "namespaces",
        "serviceaccounts",
        "configmaps",
        "secrets",
        "services",
        "deployments",
        "roles",
        "rolebindings",
    } <= names
    # Short names and groups resolve as on a cluster.
    assert re.search(r"^deployments\s+deploy\s+apps/v1\s+true\s+Deployment$", resources, re.M)
    assert kubectl.run("get", "po").stderr.startswith("No resources found in")


def test_create_get_list_delete(kubectl: Kubectl, busybox: str, kube_namespace: str) -> None:
    out = _create(kubectl, pod_manifest("web", busybox, SERVE, labels={"app": "x"}))
    assert out.stdout.strip() == "pod/web created"
    kubectl.run("wait", "--for=condition=Ready", "pod/web", "--timeout=30s")

    pod = kubectl.json("get", "pod", "web")
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    meta = pod["metadata"]
    assert meta["namespace"] == kube_namespace
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert int(meta["resourceVersion"]) > 0
    assert pod["spec"]["nodeName"]
    assert pod["status"]["phase"] == "Running"
    [status] = pod["status"]["containerStatuses"]
    assert status["ready"] is True and "running" in status["state"]
    assert status["containerID"].startswith("docker://")
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"

    table = kubectl.run("get", "pods").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table[1].split()[:4] == ["web", "1/1", "Running", "0"]

    described = kubectl.run("describe", "pod", "web").stdout
    assert re.search(r"^Status:\s+Running$", described, re.M)
    reasons = re.findall(r"^\s+Normal\s+(\w+)\s", described, re.M)
    assert reasons == ["Scheduled", "Pulled", "Created", "Started"]

    deleted = kubectl.run("delete", "pod", "web")
    assert deleted.stdout.strip() == 'pod "web" deleted'
    # kubectl delete waits for the object to go, so it is gone now.
    missing = kubectl.run("get", "pod", "web", check=False)
    assert missing.returncode == 1
    assert 'pods "web" not found' in missing.stderr


def test_label_and_field_selectors(kubectl: Kubectl, busybox: str) -> None:
    labels = {"a": {"app": "x", "tier": "web"}, "b": {"app": "y", "tier": "web"}, "c": {"app": "x"}}
    for name, pod_labels in labels.items():
        # "c" exits at once, so phases differ too.
        command = ["true"] if name == "c" else SERVE
        _create(kubectl, pod_manifest(name, busybox, command, labels=pod_labels))
    kubectl.run("wait", "--for=condition=Ready", "pod/a", "pod/b", "--timeout=30s")
    kubectl.run("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/c", "--timeout=30s")

    def names(*args: str) -> list[str]:
        out = kubectl.run("get", "pods", "-o", "name", *args).stdout
        return sorted(line.removeprefix("pod/") for line in out.split())

    assert names("-l", "app=x") == ["a", "c"]
    assert names("-l", "app==x,tier=web") == ["a"]
    assert names("-l", "app!=x") == ["b"]
    assert names("-l", "tier!=web") == ["c"]  # no label counts as "not web"
    assert names("-l", "app in (x, y)") == ["a", "b", "c"]
    assert names("-l", "app notin (x)") == ["b"]
    assert names("-l", "tier") == ["a", "b"]
    assert names("-l", "!tier") == ["c"]
    assert names("--field-selector", "metadata.name=b") == ["b"]
    assert names("--field-selector", "status.phase=Succeeded") == ["c"]
    assert names("--field-selector", "status.phase!=Succeeded,metadata.name!=a") == ["b"]

    bad = kubectl.run("get", "pods", "--field-selector", "spec.image=x", check=False)
    assert bad.returncode == 1
    assert "field label not supported: spec.image" in bad.stderr
    bad = kubectl.run("get", "pods", "-l", "app in x", check=False)
    assert bad.returncode == 1
    assert "unable to parse requirement" in bad.stderr


def test_errors_have_the_api_server_shape(kubectl: Kubectl, busybox: str) -> None:
    _create(kubectl, pod_manifest("dup", busybox, ["true"]))
    again = kubectl.run(
        "create", "-f", "-", check=False, input=json.dumps(pod_manifest("dup", busybox, ["true"]))
    )
    assert again.returncode == 1
    assert (
        'Error from server (AlreadyExists): error when creating "STDIN": pods "dup" '
        "already exists" in again.stderr
    )

    invalid = pod_manifest("Bad_Name", busybox, ["true"])
    invalid["spec"]["containers"][0]["image"] = ""
    out = kubectl.run("create", "-f", "-", input=json.dumps(invalid), check=False)
    assert out.returncode == 1
    assert (
        'The Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a '
        "lowercase RFC 1123 subdomain" in out.stderr
    )

    no_image = pod_manifest("noimage", busybox, ["true"])
    del no_image["spec"]["containers"][0]["image"]
    out = kubectl.run("create", "-f", "-", input=json.dumps(no_image), check=False)
    assert 'The Pod "noimage" is invalid: spec.containers[0].image: Required value' in out.stderr

    out = kubectl.run("delete", "pod", "ghost", check=False)
    assert out.returncode == 1
    assert 'Error from server (NotFound): pods "ghost" not found' in out.stderr

    out = kubectl.run("get", "pods", "-n", "no-such-namespace", "-o", "name")
    assert out.stdout == ""
    out = kubectl.run(
        "create",
        "-n",
        "no-such-namespace",
        "-f",
        "-",
        check=False,
        input=json.dumps(pod_manifest("p", busybox, ["true"])),
    )
    assert 'namespaces "no-such-namespace" not found' in out.stderr


def test_generate_name_and_label_edit(kubectl: Kubectl, busybox: str) -> None:
    manifest = pod_manifest("", busybox, ["true"])
    del manifest["metadata"]["name"]
    manifest["metadata"]["generateName"] = "gen-"
    created = _create(kubectl, manifest).stdout.strip()
    assert re.fullmatch(r"pod/gen-[a-z0-9]{5} created", created)
    name = created.split()[0].removeprefix("pod/")
    kubectl.run("label", "pod", name, "extra=yes")
    assert kubectl.run("get", "pods", "-l", "extra=yes", "-o", "name").stdout.strip() == f"pod/{name}"
    kubectl.run("annotate", "pod", name, "note=hello")
    assert kubectl.json("get", "pod", name)["metadata"]["annotations"]["note"] == "hello"
    # The pod spec is immutable apart from images, as upstream.
    refused = kubectl.run(
        "patch", "pod", name, "--type=merge", "-p", '{"spec":{"restartPolicy":"Always"}}', check=False
    )
    assert refused.returncode == 1
    assert "spec: Forbidden: pod updates may not change fields" in refused.stderr


def test_logs(kubectl: Kubectl, busybox: str) -> None:
    _create(kubectl, pod_manifest("talker", busybox, ["sh", "-c", "echo one; echo two >&2"]))
    kubectl.run("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/talker", "--timeout=30s")
    out = kubectl.run("logs", "talker").stdout
    assert sorted(out.splitlines()) == ["one", "two"]
    assert kubectl.run("logs", "talker", "--tail=1").stdout.strip() in ("one", "two")


def test_field_validation(kubectl: Kubectl, busybox: str) -> None:
    typo = pod_manifest("typo", busybox, ["true"])
    typo["spec"]["containers"][0]["securityContex"] = {"runAsUser": 1000}
    typo["spec"]["hostnam"] = "x"
    out = kubectl.run("create", "-f", "-", input=json.dumps(typo), check=False)
    assert out.returncode == 1
    assert (
        'Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown '
        'field "spec.containers[0].securityContex", unknown field "spec.hostnam"' in out.stderr
    )
    # Without validation the server drops what it does not know, as a Go decoder does.
    kubectl.run("create", "--validate=false", "-f", "-", input=json.dumps(typo))
    spec = kubectl.json("get", "pod", "typo")["spec"]
    assert "hostnam" not in spec
    assert "securityContex" not in spec["containers"][0]
    warned = kubectl.run(
        "create", "--validate=warn", "-f", "-", input=json.dumps({**typo, "metadata": {"name": "typo2"}})
    )
    assert 'Warning: unknown field "spec.hostnam"' in warned.stderr
