"""kubectl's watches: ``get --watch`` and ``wait`` follow pods through the server's events."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

from ..kubetools import SERVE, WAIT, Kubectl, pod_manifest


class LineReader:
    """Lines of a running process's stdout, read on a thread so waits can be bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, predicate: str) -> list[str]:
        """Read until a line contains ``predicate``; return the lines read so far."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no {predicate!r} from kubectl; saw {self.seen}") from None
            assert line is not None, f"kubectl ended before {predicate!r}: {self.seen}"
            self.seen.append(line)
            if predicate in line:
                return self.seen


def test_get_watch(kubectl: Kubectl, busybox: str) -> None:
    process = kubectl.popen("get", "pods", "--watch", "--output-watch-events")
    try:
        reader = LineReader(process)
        kubectl.run("create", "-f", "-", input=json.dumps(pod_manifest("w", busybox, SERVE)))
        reader.until("Running")
        kubectl.run("delete", "pod", "w", "--wait=false")
        lines = reader.until("DELETED")
    finally:
        process.terminate()
        process.wait(WAIT)
    rows = [line.split() for line in lines]
    assert rows[0] == ["EVENT", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    events = [(row[0], row[3]) for row in rows[1:]]
    # The pod may be created before or after kubectl's first list: either way
    # it is ADDED first, in whatever state it had reached.
    assert events[0][0] == "ADDED"
    statuses = [status for _, status in events]
    assert statuses.index("Running") < statuses.index("Terminating")
    assert events[-1][0] == "DELETED"
    assert all(kind == "MODIFIED" for kind, _ in events[1:-1])


def test_wait_for_condition_and_delete(kubectl: Kubectl, busybox: str) -> None:
    kubectl.run("create", "-f", "-", input=json.dumps(pod_manifest("waited", busybox, SERVE)))
    out = kubectl.run("wait", "--for=condition=Ready", "pod/waited", "--timeout=30s")
    assert out.stdout.strip() == "pod/waited condition met"
    kubectl.run("delete", "pod", "waited", "--wait=false")
    out = kubectl.run("wait", "--for=delete", "pod/waited", "--timeout=30s", check=False)
    # Either it was still terminating ("deleted") or already gone (kubectl says so).
    assert out.returncode == 0, out.stderr
    assert kubectl.run("get", "pods", "-o", "name").stdout == ""


def test_watch_of_a_selector(kubectl: Kubectl, busybox: str) -> None:
    process = kubectl.popen("get", "pods", "-l", "app=watched", "--watch", "--output-watch-events")
    try:
        reader = LineReader(process)
        kubectl.run("create", "-f", "-", input=json.dumps(pod_manifest("other", busybox, ["true"])))
        kubectl.run(
            "create",
            "-f",
            "-",
            input=json.dumps(pod_manifest("mine", busybox, ["true"], labels={"app": "watched"})),
        )
        kubectl.run(
            "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/mine", "pod/other", "--timeout=30s"
        )
        # Relabelling makes the pod leave the selection: a DELETED for this watch.
        kubectl.run("label", "pod", "mine", "app=gone", "--overwrite")
        lines = reader.until("DELETED")
    finally:
        process.terminate()
        process.wait(WAIT)
    rows = [line.split() for line in lines[1:]]
    assert all(row[1] == "mine" for row in rows), lines
    assert rows[0][0] == "ADDED"
    assert rows[-1][0] == "DELETED"
