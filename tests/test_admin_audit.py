"""The audit log: a real login, command and exit, written as JSON lines; a failing disk."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from pairpod.auth import hash_password
from tests.conftest import MakeGateway
from tests.support.client import connect
from tests.support.gateway import wait_until


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_session_is_audited_from_connect_to_disconnect(make_gateway: MakeGateway, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    gw = make_gateway({"audit": {"file": str(audit)}})
    result = gw.ssh("echo hi; exit 3")
    assert result.returncode == 3 and result.stdout == b"hi\n"
    lines = wait_until(
        lambda: [e for e in audit_lines(audit) if e["event"] == "disconnect"] and audit_lines(audit),
        message="the disconnect line",
    )
    events = [entry["event"] for entry in lines]
    assert events == ["connect", "auth", "environment.ready", "channel.start", "channel.exit", "disconnect"]
    assert len({entry["conn"] for entry in lines}) == 1
    for entry in lines:
        assert datetime.fromisoformat(entry["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert entry["time"].endswith("Z")
    by_event = {entry["event"]: entry for entry in lines}
    assert by_event["connect"]["remote"].startswith("127.0.0.1:")
    auth = by_event["auth"]
    assert (auth["result"], auth["method"], auth["user"]) == ("success", "publickey", "alice")
    assert auth["key"].startswith("SHA256:")
    assert by_event["environment.ready"]["backend"] == "local"
    assert by_event["channel.start"]["kind"] == "exec"
    assert by_event["channel.start"]["command"] == "echo hi; exit 3"
    assert by_event["channel.exit"]["exit_code"] == 3
    assert by_event["disconnect"]["bytes_out"] == 3
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600


async def test_a_refused_password_is_audited_without_the_password(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    gw = make_gateway(
        {
            "audit": {"file": str(audit)},
            "auth": {"users": {"bob": {"password_hash": hash_password("right-one")}}},
        }
    )
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            "127.0.0.1",
            gw.port,
            username="bob",
            password="wrong-guess-4711",
            client_keys=None,
            known_hosts=None,
            agent_path=None,
            config=None,
        )

    def failures() -> list[dict[str, Any]]:
        return [e for e in audit_lines(audit) if e["event"] == "auth"]

    found = await asyncio.to_thread(wait_until, failures)
    assert found[0]["result"] == "failure" and found[0]["method"] in {"password", "keyboard-interactive"}
    assert found[0]["user"] == "bob" and found[0]["reason"]
    assert "wrong-guess-4711" not in audit.read_text()


def test_a_failing_disk_is_logged_once_and_logins_go_on(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    # /dev/full takes the open and refuses every write (ENOSPC), as a full disk does.
    caplog.set_level(logging.INFO, logger="pairpod.audit")
    gw = make_gateway({"audit": {"file": "/dev/full"}})
    for _ in range(2):
        assert gw.ssh("echo on").stdout == b"on\n"
        wait_until(lambda: gw.connection_count() == 0)
    wait_until(
        lambda: any(r.message == "audit.write_failed" for r in caplog.records),
        message="the write failure in the log",
    )
    assert gw.ssh("echo still").stdout == b"still\n"
    assert [r.message for r in caplog.records].count("audit.write_failed") == 1


async def test_joining_kicking_and_leaving_a_shared_session_are_audited(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    gw = make_gateway({"audit": {"file": str(audit)}})
    async with await connect(gw) as owner:
        shell = await owner.create_process(term_type="xterm", term_size=(80, 24), env={"PAIRPOD_SHARE": "1"})
        banner = await asyncio.wait_for(shell.stdout.readuntil("read-write:"), 20)
        match = re.search(r"(ro-\S+)@", banner)
        assert match is not None
        token = match.group(1)
        async with await connect(gw, user=token) as joiner:
            view = await joiner.create_process(term_type="xterm", term_size=(80, 24))
            async with await connect(gw, user="alice+ctl") as control:
                kicked = await control.run("kick 1")
                assert kicked.exit_status == 0, kicked.stderr
            await asyncio.wait_for(view.wait_closed(), 20)
        shell.stdin.write("exit\n")
        await shell.wait_closed()

    def share_events() -> list[dict[str, Any]]:
        found = [e for e in audit_lines(audit) if e["event"].startswith("share.")]
        return found if len(found) == 3 else []

    events = await asyncio.to_thread(wait_until, share_events)
    assert [e["event"] for e in events] == ["share.join", "share.kick", "share.leave"]
    join, kick, leave = events
    assert join["access"] == "ro" and join["name"] == "user:alice"
    assert kick["user"] == "alice+ctl" and kick["args"] == "1"
    assert leave["conn"] == join["conn"] != kick["conn"]
    # The join token (a credential) is in no audit line.
    assert token not in audit.read_text()
