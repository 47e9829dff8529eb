"""EnvRequests: which of a client's env requests a session channel keeps, decided as each arrives."""

from __future__ import annotations

from typing import Any

from pairpod.config import SecuritySettings
from pairpod.ssh.channel import EnvRequests


def channel(**security: Any) -> tuple[EnvRequests, dict[bytes, bytes], list[str]]:
    kept: dict[bytes, bytes] = {}
    told: list[str] = []
    return EnvRequests(SecuritySettings(**security), kept, lambda: told.append("limit")), kept, told


def test_only_allowed_names_are_kept_and_the_sharing_requests_always() -> None:
    requests, kept, _ = channel(env_allow=["LANG", "LC_*"], env_deny=["LC_SECRET"])
    assert requests.receive(b"LANG", b"C.UTF-8")
    assert requests.receive(b"LC_TIME", b"C")
    assert not requests.receive(b"LC_SECRET", b"x")  # denied although LC_* allows it
    assert not requests.receive(b"LD_PRELOAD", b"/tmp/evil.so")
    assert requests.receive(b"PAIRPOD_SHARE", b"1")  # the gateway reads it itself
    assert kept == {b"LANG": b"C.UTF-8", b"LC_TIME": b"C", b"PAIRPOD_SHARE": b"1"}


def test_past_the_bound_nothing_new_is_kept_but_a_kept_name_may_change() -> None:
    requests, kept, told = channel(env_allow=["*"], max_env_vars=3)
    assert all(requests.receive(name, b"v") for name in (b"A", b"B", b"C"))
    assert not requests.receive(b"D", b"v")
    assert not requests.receive(b"E", b"v")
    assert requests.receive(b"A", b"again")
    assert kept == {b"A": b"again", b"B": b"v", b"C": b"v"}
    assert told == ["limit"]  # once, however many are ignored


def test_an_over_long_value_or_name_is_not_kept_and_the_first_refuses_the_session() -> None:
    requests, kept, _ = channel(env_allow=["*"], max_env_value=10)
    assert requests.receive(b"LANG", b"x" * 10)
    assert not requests.receive(b"TZ", b"y" * 11)
    assert not requests.receive(b"N" * 257, b"")
    assert kept == {b"LANG": b"x" * 10}
    assert requests.refusal == "environment variable TZ too long (11 bytes, max 10)"


def test_an_over_long_name_refuses_the_session_with_its_own_line() -> None:
    requests, kept, _ = channel(env_allow=["*"])
    assert not requests.receive(b"N" * 300, b"v")
    assert kept == {}
    assert requests.refusal == "environment variable name too long (300 bytes, max 256)"


def test_a_refused_name_is_not_checked_for_length() -> None:
    requests, _, _ = channel(env_allow=["LANG"], max_env_value=10)
    assert not requests.receive(b"OTHER", b"z" * 1000)
    assert requests.refusal is None


def test_no_variables_at_all_when_the_bound_is_zero() -> None:
    requests, kept, told = channel(max_env_vars=0)
    assert not requests.receive(b"LANG", b"C")
    assert kept == {} and told == ["limit"]
