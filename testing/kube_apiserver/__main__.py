"""Run a test API server as its own process: ``python -m testing.kube_apiserver``.

Prints one JSON line (url, kubeconfig path, instance) once it serves, then
runs until SIGINT or SIGTERM, when it removes every container it made. Useful
when the server should not share a process (and its GIL) with what it
measures, as in benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from .server import KubeApiServer


async def _serve(args: argparse.Namespace) -> None:
    server = KubeApiServer(
        host=args.host, port=args.port, tls=not args.plain_http, token=None if args.no_auth else ""
    )
    await server.start()
    try:
        kubeconfig = server.write_kubeconfig(Path(args.kubeconfig), namespace=args.namespace)
        print(
            json.dumps({"url": server.url, "kubeconfig": str(kubeconfig), "instance": server.instance}),
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until signalled."""
    parser = argparse.ArgumentParser(
        prog="python -m testing.kube_apiserver", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--plain-http",
        action="store_true",
        help="serve HTTP (kubectl then sends no token: combine with --no-auth)",
    )
    parser.add_argument("--no-auth", action="store_true", help="accept requests without a token")
    parser.add_argument("--namespace", default="default", help="the kubeconfig's namespace")
    parser.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    parser.add_argument("--log-level", default="WARNING", help="e.g. DEBUG to see exec frames")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
