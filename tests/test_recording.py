"""Session recordings: asciicast files replayed with the real asciinema, audit lines,
the size cap, file modes and folders, and a full disk that must not hurt the session."""

from __future__ import annotations

import json
import logging
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeGateway
from tests.support.gateway import GatewayThread, Tmux, require, wait_until
from tests.test_sharing_ssh import SHARE, Terminals, links


def _casts(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.cast"))


def _events(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def _closed(caplog: pytest.LogCaptureFixture, path: Path) -> bool:
    """The gateway logged that it finished (or cut, or stopped) this recording."""
    return any(
        r.getMessage() in ("recording.finished", "recording.cut", "recording.stopped")
        and str(path) in str(r.__dict__.get("pairpod_fields", {}).get("file"))
        for r in caplog.records
    )


def _finished_recording(root: Path, caplog: pytest.LogCaptureFixture) -> Path:
    """The one recording under ``root``, once the gateway has closed it."""
    [cast] = wait_until(lambda: _casts(root), message="a recording")
    wait_until(lambda: _closed(caplog, cast), message="the recording to be closed")
    return cast


def asciinema_cat(path: Path) -> str:
    """What ``asciinema cat`` prints (it needs a terminal: run it under ``script``)."""
    require("asciinema")
    result = subprocess.run(
        ["script", "-qec", f"asciinema cat {path}", "/dev/null"], capture_output=True, timeout=60, check=True
    )
    return result.stdout.decode("utf-8", "replace").replace("\r\n", "\n")


def _day_folder(root: Path) -> Path:
    return root / time.strftime("%Y-%m-%d", time.gmtime())


def test_pty_session_replays_with_asciinema(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    root = tmp_path / "recordings"
    gw = make_gateway({"recording": {"dir": str(root)}})
    term = Tmux("rec", tmp_path)
    try:
        term.start(gw.ssh_argv(), width=100, height=30)
        term.type("printf 'rec-%s\\n' $((6*7)); seq 1 300 | tail -n 3\n")
        term.wait_for(r"rec-42\s+298\s+299\s+300")
        term.resize(120, 40)
        term.type_once_width(120, "stty size\n")
        term.wait_for(r"40 120")
        term.type("exit\n")
        term.wait_for("PANE-EXIT=0")
    finally:
        term.close()
    cast = _finished_recording(root, caplog)
    # Per-day folder, private folder and file, a name that says when, who and which connection.
    assert cast.parent == _day_folder(root)
    assert stat.S_IMODE(cast.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(cast.stat().st_mode) == 0o600
    header, events = _events(cast)
    assert re.fullmatch(r"\d{6}-alice-[0-9a-f]{12}-\d+\.cast", cast.name)
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (100, 30)
    assert abs(header["timestamp"] - time.time()) < 600
    assert header["env"]["TERM"].startswith(("tmux", "screen", "xterm"))
    assert header["env"]["SHELL"] == "/bin/bash"
    assert header["pairpod"]["user"] == "alice"
    assert header["pairpod"]["connection"] in cast.name
    assert "alice" in header["title"]
    kinds = {event[1] for event in events}
    assert kinds == {"o", "r"}  # no input unless recording.input is on
    assert ["r", "120x40"] in [event[1:] for event in events]
    replay = asciinema_cat(cast)
    assert "rec-42\n298\n299\n300\n" in replay
    assert "40 120\n" in replay


def test_input_is_recorded_only_when_asked(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    root = tmp_path / "recordings"
    gw = make_gateway({"recording": {"dir": str(root), "input": True}})
    result = gw.ssh("-tt", "cat", input=b"typed-secret\x04")
    assert result.returncode == 0
    cast = _finished_recording(root, caplog)
    _, events = _events(cast)
    typed = "".join(event[2] for event in events if event[1] == "i")
    assert "typed-secret" in typed


def test_exec_channels_leave_an_audit_line(
    gateway: GatewayThread, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    gw = make_gateway({"recording": {"dir": str(root)}})
    result = gw.ssh("head -c 5 >/dev/null; printf abc; exit 3", input=b"hello")
    assert (result.returncode, result.stdout) == (3, b"abc")
    audit = _day_folder(root) / "audit.jsonl"
    line = wait_until(lambda: audit.exists() and audit.read_text(), message="an audit line")
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    [record] = [json.loads(text) for text in line.splitlines()]
    assert record["kind"] == "exec"
    assert record["command"] == "head -c 5 >/dev/null; printf abc; exit 3"
    assert (record["exit_code"], record["exit_signal"]) == (3, None)
    assert (record["bytes_in"], record["bytes_out"]) == (5, 3)
    assert record["user"] == "alice" and record["duration"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert not _casts(root)  # no PTY: no asciicast


def test_size_cap_notes_where_the_recording_was_cut(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    root = tmp_path / "recordings"
    gw = make_gateway({"recording": {"dir": str(root), "max_bytes": 4096}})
    result = gw.ssh("-tt", "seq 1 20000", input=b"")
    # The session itself is not cut.
    assert result.stdout.replace(b"\r\n", b"\n").endswith(b"19999\n20000\n")
    cast = _finished_recording(root, caplog)
    assert cast.stat().st_size <= 4096
    replay = asciinema_cat(cast)
    assert replay.startswith("1\n2\n3\n")
    assert replay.rstrip().endswith("[pairpod: recording cut here: max_bytes (4096) reached]")


def test_full_disk_stops_the_recording_not_the_session(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    root = tmp_path / "small-disk"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        gw = make_gateway({"recording": {"dir": str(root)}})
        result = gw.ssh("-tt", "seq 1 100000; echo all-done", input=b"")
        output = result.stdout.replace(b"\r\n", b"\n")
        assert output.endswith(b"99999\n100000\nall-done\n")
        assert result.returncode == 0
        stopped = wait_until(
            lambda: [r for r in caplog.records if r.getMessage() == "recording.stopped"],
            message="the log to say the recording stopped",
        )
        assert stopped[0].__dict__["pairpod_fields"]["reason"] == "No space left on device"
        # The next session on the same gateway works as well.
        assert gw.ssh("echo still-serving").stdout == b"still-serving\n"
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_a_shared_session_is_recorded_once_with_the_joiners_input(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    root = tmp_path / "recordings"
    gw = make_gateway({"recording": {"dir": str(root), "input": True}, "sharing": {"open": True}})
    terminals = Terminals(tmp_path)
    try:
        owner = terminals.start("owner", gw.ssh_argv(options=SHARE))
        _, rw = links(owner)
        joiner = terminals.start("joiner", gw.ssh_argv(user=rw, options=["-tt"]))
        joiner.wait_for(r"@\S*:.*[#$]")  # the prompt reached the joiner
        joiner.type("echo joined-$((40+2))\r")
        owner.wait_for("joined-42")
        owner.type("exit\r")
        owner.wait_for("PANE-EXIT=")
    finally:
        terminals.close()
    cast = _finished_recording(root, caplog)
    assert _casts(root) == [cast]  # the joiner's connection records nothing of its own
    header, events = _events(cast)
    assert header["pairpod"]["user"] == "alice"
    assert "echo joined-$((40+2))" in "".join(e[2] for e in events if e[1] == "i")
    assert "joined-42" in asciinema_cat(cast)


def test_a_recording_that_falls_behind_drops_events_and_says_where(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    root = tmp_path / "recordings"
    # The smallest buffer: a flood outruns the writer, which writes in rounds.
    gw = make_gateway({"recording": {"dir": str(root), "buffer": 65536}})
    result = gw.ssh("-tt", "seq 1 300000", input=b"")
    assert result.stdout.replace(b"\r\n", b"\n").endswith(b"299999\n300000\n")  # session intact
    cast = _finished_recording(root, caplog)
    replay = asciinema_cat(cast)
    assert re.search(r"\[pairpod: \d+ events lost here: the recording fell behind\]", replay)
    assert replay.startswith("1\n2\n3\n")
    assert any(r.getMessage() == "recording.behind" for r in caplog.records)
