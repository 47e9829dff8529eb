"""Idle timeout and maximum session duration through a real gateway and OpenSSH."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import MakeGateway
from tests.support.gateway import Tmux, processes_matching, wait_until
from tests.support.http_peers import ConfigWebhookPeer, served_in_thread


def test_idle_session_is_told_and_ended(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gw = make_gateway({"session": {"idle_timeout": "3s"}})
    marker = f"3004.{os.getpid()}"
    term = Tmux("idle", tmp_path)
    try:
        term.start(gw.ssh_argv())
        term.type(f"sleep {marker} &\n")  # something of the environment's to see removed
        wait_until(lambda: processes_matching(marker), message="the background job")
        # Output counts as activity: a loop printing for longer than the timeout survives.
        term.type("for i in 1 2 3 4 5 6; do echo tick-$i; sleep 1; done; echo loop-$((40+2))\n")
        term.wait_for("loop-42")
        assert "idle for" not in term.screen()
        # Then nothing happens: the user is told, and the connection ends.
        term.wait_for(r"pairpod: idle for 3s, disconnecting")
        term.wait_for(r"PANE-EXIT=\d+")
    finally:
        term.close()
    wait_until(lambda: gw.connection_count() == 0, message="the connection to be gone")
    wait_until(lambda: not processes_matching(marker), message="the environment to be removed")
    wait_until(lambda: gw.task_count() <= gw.baseline_tasks, message="its tasks to end")


def test_max_duration_warns_then_ends(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"session": {"max_duration": "4s"}})
    started = time.monotonic()
    result = gw.ssh("while :; do echo busy; sleep 0.5; done", timeout=30)
    elapsed = time.monotonic() - started
    stderr = result.stderr.decode()
    # Under two minutes the warning comes at half-time.
    assert "pairpod: this session ends in 2s (maximum duration 4s)" in stderr
    assert "pairpod: this session reached its maximum duration (4s), disconnecting" in stderr
    assert stderr.index("ends in 2s") < stderr.index("reached its maximum")
    assert result.stdout.startswith(b"busy\n")
    assert elapsed < 25  # liveness only
    wait_until(lambda: gw.connection_count() == 0, message="the connection to be gone")


def test_per_user_limit_overrides_the_gateway(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gw = make_gateway(
        {
            "session": {"max_duration": "1h"},
            "auth": {"users": {"alice": {"keys": [], "session": {"max_duration": "2s"}}, "bob": {}}},
        }
    )
    alice = gw.ssh("sleep 20; echo finished", user="alice", timeout=30)
    assert b"maximum duration (2s), disconnecting" in alice.stderr
    assert b"finished" not in alice.stdout
    bob = gw.ssh("sleep 3; echo finished", user="bob", timeout=30)
    assert bob.stdout == b"finished\n"
    assert b"pairpod:" not in bob.stderr


def test_config_webhook_sets_the_limit(make_gateway: MakeGateway) -> None:
    peer = ConfigWebhookPeer()
    peer.answers["alice"] = {"config": {"session": {"idle_timeout": "2s"}}}
    with served_in_thread(peer):
        gw = make_gateway({"auth": {"config_webhook": {"url": peer.config_url}}})
        # stdin stays open and silent: only the idle timeout can end this.
        client = subprocess.Popen(
            gw.ssh_argv("cat"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            client.wait(30)
        finally:
            client.kill()
        assert client.stdin is not None and client.stderr is not None
        client.stdin.close()
        stderr = client.stderr.read()
    assert b"pairpod: idle for 2s, disconnecting" in stderr
