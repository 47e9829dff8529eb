"""Write the kubeconfig file clients use to reach a test server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "pairpod-test"


def kubeconfig_dict(
    server_url: str,
    *,
    token: str | None,
    namespace: str = "default",
    ca_pem: bytes | None = None,
) -> dict[str, Any]:
    """A one-cluster, one-user, one-context kubeconfig."""
    cluster: dict[str, Any] = {"server": server_url}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    user: dict[str, Any] = {"token": token} if token else {}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": user}],
        "contexts": [
            {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}
        ],
        "current-context": CONTEXT,
    }


def write_kubeconfig(
    path: Path,
    server_url: str,
    *,
    token: str | None,
    namespace: str = "default",
    ca_pem: bytes | None = None,
) -> Path:
    """Write a kubeconfig (mode 0600, as it holds a token) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(
        kubeconfig_dict(server_url, token=token, namespace=namespace, ca_pem=ca_pem), sort_keys=False
    )
    path.touch(mode=0o600)
    path.write_text(text)
    return path
