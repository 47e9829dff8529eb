"""The pair Pod and Service: accepted by kubectl and by the API test server, and coherent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pairpod.cli import pair
from testing.kube_apiserver.fixture import KubeApiServerThread, kube_apiserver, kube_namespace
from tests.test_kubernetes_deploy import _kubectl

__all__ = ["kube_apiserver", "kube_namespace"]

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "pair" / "pod.yaml"


def _objects() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}


def test_kubectl_accepts_the_pod_and_service(kube_apiserver: KubeApiServerThread, tmp_path: Path) -> None:
    assert set(_objects()) == {"Pod/pair", "Service/pair"}
    client = _kubectl(kube_apiserver, tmp_path, "apply", "--dry-run=client", "-f", str(MANIFEST))
    assert client.returncode == 0, client.stderr
    assert client.stdout.count("(dry run)") == 2
    server = _kubectl(
        kube_apiserver,
        tmp_path,
        "apply",
        "-n",
        "default",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        str(MANIFEST),
    )
    assert server.returncode == 0, server.stderr
    assert server.stdout.count("(server dry run)") == 2
    assert "Warning" not in server.stderr, server.stderr


def test_the_pod_runs_pair_for_its_args_with_the_secret() -> None:
    objects = _objects()
    pod, service = objects["Pod/pair"]["spec"], objects["Service/pair"]["spec"]
    container = pod["containers"][0]
    # The image's entrypoint is `pairpod pair`: args are what the command accepts.
    parsed = pair.make_context("pair", list(container["args"]))
    assert parsed.params["github"] == tuple(container["args"])
    assert container["envFrom"] == [{"secretRef": {"name": "pair"}}]
    # --name may come from the same Secret.
    named = next(p for p in pair.params if p.name == "name")
    assert named.envvar == "PAIRPOD_NAME"
    assert container["ports"] == [{"name": "ssh", "containerPort": 2222, "protocol": "TCP"}]
    assert service["ports"][0]["targetPort"] == "ssh" and service["ports"][0]["port"] == 2222
    assert service["selector"] == objects["Pod/pair"]["metadata"]["labels"]
    assert pod["restartPolicy"] == "Always"
