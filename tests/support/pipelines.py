"""Shell pipelines around the real ssh client, bounded in time, leaving nothing behind."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadRun:
    """What ``COMMAND | head -1`` gave: head's output, the command's exit status, the time."""

    out: bytes
    status: int
    elapsed: float


def run_into_head(argv: Sequence[str], timeout: float = 60) -> HeadRun:
    """Run ``argv | head -1`` in a shell, bounded by ``timeout``.

    The pipeline ends only when ``argv`` does, which is the point: a program
    whose reader went away must end too. On timeout the whole process group
    is killed and AssertionError raised.
    """
    began = time.monotonic()
    proc = subprocess.Popen(
        ["sh", "-c", f"{{ {shlex.join(argv)}; echo pipeline-status:$? >&2; }} | head -1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"`{shlex.join(argv)} | head -1` still running after {timeout}s") from None
    elapsed = time.monotonic() - began
    match = re.search(rb"pipeline-status:(\d+)", err)
    assert match, err.decode(errors="replace")
    return HeadRun(out, int(match.group(1)), elapsed)
