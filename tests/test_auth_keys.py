"""authorized_keys parsing, options (restrict, from=, environment=...), and static key sources."""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairpod.auth.addresses import lockout_key, match_from
from pairpod.auth.keys import (
    KeyFile,
    KeyParseError,
    StaticKeys,
    find_key,
    parse_authorized_keys,
    parse_expiry,
    parse_key_line,
    parse_options,
    split_options,
)
from pairpod.config import AuthSettings


def _pub(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key().decode().split()[:2])


@pytest.fixture(scope="module")
def keys() -> list[asyncssh.SSHKey]:
    return [asyncssh.generate_private_key("ssh-ed25519") for _ in range(3)]


@pytest.fixture(scope="module")
def lines(keys: list[asyncssh.SSHKey]) -> list[str]:
    return [_pub(k) for k in keys]


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [getattr(r, "pairpod_fields", {}) for r in caplog.records if r.getMessage() == name]


# -- single lines ---------------------------------------------------------------------


def test_plain_line_with_comment(keys: list[asyncssh.SSHKey], lines: list[str]) -> None:
    entry = parse_key_line(f"{lines[0]} alice@laptop  ", "t")
    assert entry.blob == keys[0].public_data
    assert entry.comment == "alice@laptop"
    assert entry.algorithm == "ssh-ed25519"
    perms = entry.options.permissions()
    assert perms.pty and perms.port_forwarding and perms.forced_command is None


def test_rsa_and_ecdsa_keys_parse() -> None:
    for alg in ("ssh-rsa", "ecdsa-sha2-nistp256"):
        key = asyncssh.generate_private_key(alg, **({"key_size": 2048} if alg == "ssh-rsa" else {}))
        assert parse_key_line(_pub(key), "t").algorithm == alg


def test_command_with_escaped_quotes_and_environment(lines: list[str]) -> None:
    line = f'command="echo \\"hi\\", there",environment="GREETING=a b=c" {lines[0]}'
    entry = parse_key_line(line, "t")
    perms = entry.options.permissions()
    assert perms.forced_command == 'echo "hi", there'
    assert dict(perms.environment) == {"GREETING": "a b=c"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            "restrict",
            dict(
                pty=False,
                port_forwarding=False,
                agent_forwarding=False,
                x11_forwarding=False,
                user_rc=False,
            ),
        ),
        ("restrict,pty", dict(pty=True, port_forwarding=False)),
        ("pty,restrict", dict(pty=False)),
        ("RESTRICT,Port-Forwarding", dict(pty=False, port_forwarding=True)),
        ("no-pty", dict(pty=False, port_forwarding=True)),
        (
            "no-port-forwarding,no-agent-forwarding,no-X11-forwarding",
            dict(pty=True, port_forwarding=False, agent_forwarding=False, x11_forwarding=False),
        ),
        ('permitopen="localhost:80"', dict(port_forwarding=False)),
        ('permitopen="localhost:80",port-forwarding', dict(port_forwarding=False)),
        ('tunnel="0",no-touch-required', dict(pty=True, port_forwarding=True)),
    ],
)
def test_restrict_and_flags(lines: list[str], options: str, expected: dict[str, bool]) -> None:
    perms = parse_key_line(f"{options} {lines[0]}", "t").options.permissions()
    for name, value in expected.items():
        assert getattr(perms, name) is value, name


@pytest.mark.parametrize(
    ("line_options", "reason"),
    [
        ("cert-authority", "trusted_user_ca_keys"),
        ('principals="alice"', "principals"),
        ("verify-required", "verify-required"),
        ("frobnicate", "unknown option"),
        ('command="a",command="b"', "more than one command"),
        ('from="10.0.0.0/8",from="::1"', "more than one from"),
        ('environment="1BAD=x"', "environment="),
        ('environment="NOEQUALS"', "environment="),
        ("command", "needs a value"),
        ('no-pty="yes"', "takes no value"),
        ("command=unquoted", "double quotes"),
        ('command="never closed', "closing quote"),
        ('from="10.0.0.0/99"', "invalid CIDR"),
        ('from=","', "empty"),
        ('expiry-time="2020"', "expiry-time"),
        ('expiry-time="20201341"', "not a date"),
    ],
)
def test_bad_options_make_the_line_unusable(lines: list[str], line_options: str, reason: str) -> None:
    with pytest.raises(KeyParseError, match=reason):
        parse_key_line(f"{line_options} {lines[0]}", "t")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "empty line"),
        ("ssh-ed25519", "expected a key type"),
        ("ssh-ed25519 !!!notbase64", "not base64"),
        ("ssh-ed25519 AAAA", "invalid ssh-ed25519 key"),
        ("ssh-foo AAAAC3NzaC1lZDI1NTE5", "unknown option 'ssh-foo'"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "certificate"),
        ("no-pty", "followed by a key"),
    ],
)
def test_bad_lines(line: str, reason: str) -> None:
    with pytest.raises(KeyParseError, match=reason):
        parse_key_line(line, "t")


def test_key_type_must_match_key_data(keys: list[asyncssh.SSHKey]) -> None:
    data = _pub(keys[0]).split()[1]
    with pytest.raises(KeyParseError):
        parse_key_line(f"ssh-rsa {data}", "t")


def test_options_refused_where_not_allowed(lines: list[str]) -> None:
    with pytest.raises(KeyParseError, match="not a key line"):
        parse_key_line(f"no-pty {lines[0]}", "t", allow_options=False)


def test_expiry_time(lines: list[str]) -> None:
    assert parse_expiry("20300101Z") == 1893456000.0
    assert parse_expiry("203001010000Z") == 1893456000.0
    assert parse_expiry("20300101000000Z") == 1893456000.0
    past = parse_key_line(f'expiry-time="20000101" {lines[0]}', "t").options
    future = parse_key_line(f'expiry-time="29990101" {lines[0]}', "t").options
    assert past.refusal("127.0.0.1", time.time()) == "key expired (expiry-time)"
    assert future.refusal("127.0.0.1", time.time()) is None


# -- files and texts ------------------------------------------------------------------


def test_invalid_lines_are_skipped_with_a_log_line(
    lines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    text = "\n".join(
        ["# a comment", "", lines[0], "garbage here", f"frobnicate {lines[1]}", f"  {lines[2]} c"]
    )
    with caplog.at_level(logging.WARNING, "pairpod"):
        entries, skipped = parse_authorized_keys(text, "file")
    assert [e.origin for e in entries] == ["file:3", "file:6"]
    assert [n for n, _ in skipped] == [4, 5]
    logged = events(caplog, "keys.line_skipped")
    assert [(e["origin"], e["line"]) for e in logged] == [("file", 4), ("file", 5)]
    assert "unknown option" in str(logged[1]["reason"])


def test_key_file_reloads_when_changed_and_survives_removal(
    tmp_path: Path, lines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(lines[0] + "\n")
    file = KeyFile(path)
    assert len(file.entries()) == 1
    path.write_text(lines[0] + "\n" + lines[1] + "\n")
    os.utime(path, ns=(1, 10**18))  # a different mtime even on a coarse clock
    assert len(file.entries()) == 2
    path.unlink()
    with caplog.at_level(logging.WARNING, "pairpod"):
        assert file.entries() == ()
        assert file.entries() == ()
    assert len(events(caplog, "keys.file_unreadable")) == 1  # once, not once per login


def test_static_keys_order_and_scope(tmp_path: Path, keys: list[asyncssh.SSHKey], lines: list[str]) -> None:
    global_file = tmp_path / "global"
    global_file.write_text(f"{lines[2]}\n{lines[0]}\n")
    alice_file = tmp_path / "alice"
    alice_file.write_text(f"no-pty {lines[1]}\n")
    auth = AuthSettings(
        authorized_keys=global_file,
        users={"alice": {"keys": [f'command="ls" {lines[0]}', "junk"], "authorized_keys": alice_file}},
    )
    static = StaticKeys(auth)
    assert static.configured
    alice = list(static.entries_for("alice"))
    assert [e.origin for e in alice] == [
        "auth.users.alice.keys[0]",
        f"{alice_file}:1",
        f"{global_file}:1",
        f"{global_file}:2",
    ]
    # The user's own entry wins over the global one for the same key.
    entry, _ = find_key(alice, keys[0], "127.0.0.1")
    assert entry is not None and entry.options.command == "ls"
    # Bob only has the global file.
    entry, _ = find_key(static.entries_for("bob"), keys[0], "127.0.0.1")
    assert entry is not None and entry.options.command is None
    entry, _ = find_key(static.entries_for("bob"), keys[1], "127.0.0.1")
    assert entry is None


def test_find_key_skips_entries_refused_by_from(keys: list[asyncssh.SSHKey], lines: list[str]) -> None:
    entries, _ = parse_authorized_keys(
        f'from="10.0.0.0/8",command="a" {lines[0]}\nfrom="127.0.0.1" {lines[0]}\n', "f"
    )
    entry, refusals = find_key(entries, keys[0], "127.0.0.1")
    assert entry is not None and entry.origin == "f:2"
    assert refusals == ["f:1: address 127.0.0.1 not allowed by from="]
    entry, refusals = find_key(entries, keys[0], "192.168.1.1")
    assert entry is None and len(refusals) == 2


# -- from= patterns -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "address", "allowed"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.*"], "127.0.0.9", True),
        (["127.0.0.?"], "127.0.0.10", False),
        (["10.0.0.0/8"], "10.200.3.4", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["*", "!10.0.0.0/8"], "10.0.0.1", False),
        (["!10.0.0.0/8", "*"], "10.0.0.1", False),
        (["!10.0.0.0/8", "*"], "8.8.8.8", True),
        (["::1"], "::1", True),
        (["2001:db8::/32"], "2001:db8::5", True),
        (["2001:db8::/32"], "10.0.0.1", False),
        (["127.0.0.1"], "::ffff:127.0.0.1", True),
        (["example.com"], "127.0.0.1", False),
        (["*"], "not-an-ip", False),
        ([], "127.0.0.1", False),
    ],
)
def test_match_from(patterns: list[str], address: str, allowed: bool) -> None:
    assert match_from(patterns, address) is allowed


def test_lockout_key_groups_ipv6_by_64() -> None:
    assert lockout_key("2001:db8:1:2:3:4:5:6") == lockout_key("2001:db8:1:2:ffff::1")
    assert lockout_key("2001:db8:1:2::1") != lockout_key("2001:db8:1:3::1")
    assert lockout_key("::ffff:10.1.2.3") == "10.1.2.3"


# -- properties -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_parser_never_raises_on_any_text(text: str) -> None:
    entries, skipped = parse_authorized_keys(text, "fuzz")
    assert entries == []  # random text holds no valid key
    assert all(isinstance(reason, str) for _, reason in skipped)


_NAMES = st.sampled_from(["command", "from", "environment", "tunnel", "permitopen"])
_VALUES = st.text(
    alphabet=st.characters(blacklist_characters="\\\n\r\0", blacklist_categories=("Cs",)),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), min_size=1, max_size=5))
def test_option_quoting_round_trips(options: list[tuple[str, str]]) -> None:
    text = ",".join(f'{n}="{v.replace(chr(34), chr(92) + chr(34))}"' for n, v in options)
    parsed, rest = split_options(text + " ssh-ed25519 AAAA")
    assert parsed == options
    assert rest == "ssh-ed25519 AAAA"


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 32))
def test_cidr_from_agrees_with_ipaddress(
    client: ipaddress.IPv4Address, base: ipaddress.IPv4Address, prefix: int
) -> None:
    network = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    assert match_from([str(network)], str(client)) is (client in network)
    assert match_from(["*", f"!{network}"], str(client)) is (client not in network)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(["restrict", "pty", "no-pty", "port-forwarding", "no-port-forwarding"]),
        max_size=6,
    )
)
def test_last_pty_flag_wins(flags: list[str]) -> None:
    opts = parse_options((f, None) for f in flags)
    pty = True
    for flag in flags:
        pty = {"restrict": False, "pty": True, "no-pty": False}.get(flag, pty)
    assert opts.pty is pty
