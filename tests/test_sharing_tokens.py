"""Share tokens, identities and the registry of shared sessions."""

from __future__ import annotations

import hmac
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairpod.sharing import tokens
from pairpod.sharing.tokens import (
    ALPHABET,
    MAX_LINKS,
    TOKEN_BITS,
    TOKEN_LENGTH,
    Access,
    ShareRegistry,
    TooManyLinks,
    join_command,
    looks_like_join_username,
    new_token,
    normalize_identity,
    parse_join_username,
    parse_share_with,
    rejection_delay,
    share_banner,
)


def test_tokens_carry_at_least_128_bits_from_a_lookalike_free_alphabet() -> None:
    assert len(set(ALPHABET)) == len(ALPHABET) == 55
    assert not set("0O1lIio") & set(ALPHABET)
    assert TOKEN_LENGTH * math.log2(55) == TOKEN_BITS
    assert TOKEN_BITS >= 128
    seen = {new_token() for _ in range(2000)}
    assert len(seen) == 2000
    for token in seen:
        assert len(token) == TOKEN_LENGTH
        assert set(token) <= set(ALPHABET)


def test_join_usernames_parse_only_with_the_exact_shape() -> None:
    token = new_token()
    assert parse_join_username(f"ro-{token}") == (Access.READ_ONLY, token)
    assert parse_join_username(f"rw-{token}") == (Access.READ_WRITE, token)
    assert looks_like_join_username(f"rw-{token}")
    for bad in (
        token,
        f"RO-{token}",
        f"ro-{token}x",
        f"ro-{token[:-1]}",
        f"ro-{token[:-1]}0",
        f"xx-{token}",
        "ro-",
        "alice",
        f"ro-{token} ",
        f"ro--{token[1:]}",
    ):
        assert parse_join_username(bad) is None, bad


@given(st.text(max_size=40))
def test_arbitrary_usernames_are_not_links_unless_shaped_like_one(name: str) -> None:
    parsed = parse_join_username(name)
    if parsed is not None:
        access, token = parsed
        assert name == access.prefix + token
        assert len(token) == TOKEN_LENGTH and set(token) <= set(ALPHABET)


def test_minted_links_look_up_to_their_session_and_access() -> None:
    registry: ShareRegistry[str] = ShareRegistry()
    session = registry.create_session(owner="user:alice", terminal="T1", share_with=["github:bob"])
    ro = registry.mint(session, Access.READ_ONLY)
    rw = registry.mint(session, Access.READ_WRITE)
    assert ro.username.startswith("ro-") and rw.username.startswith("rw-")
    # Two independent secrets: the read-write link is not the read-only one re-prefixed.
    assert ro.username[3:] != rw.username[3:]
    found = registry.lookup(ro.username)
    assert found is not None and found[0] is ro and found[1] is session
    assert found[1].terminal == "T1"
    found = registry.lookup(rw.username)
    assert found is not None and found[0].access is Access.READ_WRITE


def test_changing_the_prefix_of_a_read_only_link_does_not_upgrade_it() -> None:
    registry: ShareRegistry[str] = ShareRegistry()
    session = registry.create_session(owner="user:alice", terminal="T")
    ro = registry.mint(session, Access.READ_ONLY)
    assert registry.lookup("rw-" + ro.username[3:]) is None


def test_unknown_revoked_and_closed_links_are_all_invalid() -> None:
    registry: ShareRegistry[str] = ShareRegistry()
    session = registry.create_session(owner="user:alice", terminal="T")
    first = registry.mint(session, Access.READ_WRITE)
    second = registry.mint(session, Access.READ_ONLY)
    assert registry.lookup("rw-" + new_token()) is None
    assert registry.lookup("alice") is None
    assert registry.revoke(session, first.link_id)
    assert not registry.revoke(session, first.link_id)  # already revoked
    assert not registry.revoke(session, "nosuchid")
    assert registry.lookup(first.username) is None
    assert registry.lookup(second.username) is not None
    assert [link.link_id for link in session.active_links()] == [second.link_id]
    registry.close_session(session)
    assert registry.lookup(second.username) is None
    assert len(registry) == 0 and registry.get(session.session_id) is None
    with pytest.raises(KeyError):
        registry.mint(session, Access.READ_ONLY)


def test_links_of_a_session_are_bounded_live_and_revoked() -> None:
    # An owner minting (and revoking) in a loop costs the gateway a bounded amount.
    registry: ShareRegistry[str] = ShareRegistry()
    session = registry.create_session(owner="user:alice", terminal="T")
    live = [registry.mint(session, Access.READ_ONLY) for _ in range(MAX_LINKS)]
    with pytest.raises(TooManyLinks):
        registry.mint(session, Access.READ_WRITE)
    for link in live:
        assert registry.revoke(session, link.link_id)
    for _ in range(3 * MAX_LINKS):
        assert registry.revoke(session, registry.mint(session, Access.READ_ONLY).link_id)
    newest = registry.mint(session, Access.READ_WRITE)
    assert len(session.links) == MAX_LINKS + 1
    assert registry.lookup(newest.username) is not None
    assert all(registry.lookup(link.username) is None for link in live)


def test_lookup_compares_digests_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording_compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", recording_compare)
    registry: ShareRegistry[str] = ShareRegistry()
    session = registry.create_session(owner="user:alice", terminal="T")
    link = registry.mint(session, Access.READ_ONLY)
    assert registry.lookup(link.username) is not None
    assert len(calls) == 1
    # What is compared are keyed digests, never the token text itself.
    assert all(link.username.encode() not in a + b for a, b in calls)


def test_a_link_never_shows_its_secret_in_repr() -> None:
    registry: ShareRegistry[str] = ShareRegistry()
    session = registry.create_session(owner="user:alice", terminal="T")
    link = registry.mint(session, Access.READ_WRITE)
    assert link.username[3:] not in repr(link)
    assert link.username[3:] not in repr(session)
    assert link.link_id in repr(link)


def test_identities_are_checked_and_normalised() -> None:
    assert normalize_identity(" GitHub:Bob ") == "github:bob"
    assert normalize_identity("gitlab:Carol.X") == "gitlab:carol.x"
    assert normalize_identity("user:Dave") == "user:Dave"  # local names keep their case
    for bad in (
        "bob",
        "twitter:bob",
        "github:",
        "github:-bob",
        "github:bo--b",
        "user:",
        "github:" + "a" * 40,
        "gitlab:a b",
    ):
        with pytest.raises(ValueError):
            normalize_identity(bad)
    assert parse_share_with("github:bob, gitlab:carol  user:dave,,") == frozenset(
        {"github:bob", "gitlab:carol", "user:dave"}
    )
    assert parse_share_with("") == frozenset()
    with pytest.raises(ValueError, match="twitter"):
        parse_share_with("github:bob,twitter:eve")


def test_who_may_join() -> None:
    registry: ShareRegistry[str] = ShareRegistry()
    named = registry.create_session(owner="user:alice", terminal="T", share_with=["GitHub:Bob", "user:dave"])
    # The owner (from a second terminal) and the named, normalised: forge names
    # fold case, local names keep it.
    assert named.may_join_as() == ["github:bob", "user:alice", "user:dave"]
    assert not named.open
    opened = registry.create_session(owner="user:alice", terminal="T", open=True)
    assert opened.open and opened.may_join_as() == ["user:alice"]
    assert [s.session_id for s in registry.sessions_of("user:alice")] == [named.session_id, opened.session_id]
    assert registry.sessions_of("github:bob") == []


def test_join_commands_and_banner() -> None:
    assert join_command("ro-abc", "gw.example", 22) == "ssh ro-abc@gw.example"
    assert join_command("ro-abc", "gw.example", 2222) == "ssh -p 2222 ro-abc@gw.example"
    registry: ShareRegistry[str] = ShareRegistry()
    session = registry.create_session(owner="user:alice", terminal="T")
    ro = registry.mint(session, Access.READ_ONLY)
    rw = registry.mint(session, Access.READ_WRITE)
    banner = share_banner([ro, rw], "gw", 2222)
    assert banner.split("\r\n") == [
        "pairpod: this session is shared",
        f"  read-only:  ssh -p 2222 {ro.username}@gw",
        f"  read-write: ssh -p 2222 {rw.username}@gw",
        "",
    ]


def test_rejection_delay_is_random_and_small() -> None:
    delays = [rejection_delay() for _ in range(200)]
    assert all(0.5 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 1
