"""Host mode's pieces without I/O: the frame codec, and who gets which links back."""

from __future__ import annotations

import asyncio
import re
import secrets
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairpod.config import Config, validate_config
from pairpod.errors import ConfigError
from pairpod.sharing.hosted import Hello, HostedSessions, HostRefused, link_key
from pairpod.sharing.hostwire import (
    MAX_GRACE,
    MAX_MINTED_NUMBER,
    MAX_PAYLOAD,
    FrameDecoder,
    Kind,
    ProtocolError,
    Refusal,
    encode,
    encode_chunks,
    encode_json,
    encode_resize,
    grace_period,
    printable,
)
from pairpod.sharing.service import ControlError, SharingService
from pairpod.sharing.tokens import MAX_LINKS


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(min_value=1, max_value=97))
def test_frames_survive_any_split_of_the_stream(payloads: list[bytes], step: int) -> None:
    stream = b"".join(encode(Kind.OUTPUT, p) for p in payloads) + encode_resize(132, 43)
    decoder = FrameDecoder()
    frames = []
    for start in range(0, len(stream), step):
        frames += decoder.feed(stream[start : start + step])
    assert [f.payload for f in frames[:-1]] == payloads
    assert frames[-1].kind is Kind.RESIZE and frames[-1].size() == (132, 43)
    assert decoder.pending == 0


def test_a_huge_length_is_refused_before_anything_is_buffered() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="OUTPUT frame of 4294967295 bytes"):
        decoder.feed(struct.pack(">BI", Kind.OUTPUT, 0xFFFFFFFF))
    with pytest.raises(ProtocolError, match="HELLO frame of 20000 bytes"):
        FrameDecoder().feed(struct.pack(">BI", Kind.HELLO, 20000))
    with pytest.raises(ProtocolError, match="unknown frame kind 99"):
        FrameDecoder().feed(b"\x63\x00\x00\x00\x00")


def test_big_output_is_split_into_frames_that_fit() -> None:
    data = secrets.token_bytes(MAX_PAYLOAD * 2 + 5)
    frames = FrameDecoder().feed(b"".join(encode_chunks(Kind.OUTPUT, data)))
    assert [len(f.payload) for f in frames] == [MAX_PAYLOAD, MAX_PAYLOAD, 5]
    assert b"".join(f.payload for f in frames) == data


def test_a_hello_is_checked_and_its_size_bounded() -> None:
    key = "ab" * 32
    hello = Hello.parse(
        {"v": 1, "key": key, "share_with": ["github:bob"], "cols": 99999, "rows": 0}, 500, 200
    )
    assert (hello.cols, hello.rows) == (500, 1)
    for bad, message in (
        ({"v": 2, "key": key}, "protocol version"),
        ({"v": 1, "key": "short"}, "64 hex digits"),
        ({"v": 1, "key": key, "share_with": "github:bob"}, "list of identities"),
        ({"v": 1, "key": key, "share_with": ["x"] * 51}, "at most 50"),
        ({"v": 1, "key": key, "cols": "80"}, "must be numbers"),
    ):
        with pytest.raises(HostRefused, match=message):
            Hello.parse(bad, 500, 200)
    for revoked in ("rw", ["rw", "admin"], [["rw"]]):
        with pytest.raises(ProtocolError, match="revoked must be a list of ro and rw"):
            Hello.parse({"v": 1, "key": key, "revoked": revoked}, 500, 200)
    assert Hello.parse({"v": 1, "key": key, "revoked": ["rw", "rw"]}, 500, 200).revoked == ("rw",)
    # Minted links: at most the per-session cap of labels, and a bounded next number.
    for minted, number, message in (
        ("ro.1", 2, "minted must be a list"),
        (["ro.1"] * (MAX_LINKS + 1), 2, f"at most {MAX_LINKS} links"),
        (["admin.1"], 2, "not a minted link"),
        (["ro.1234567890"], 2, "not a minted link"),
        (["ro.1"], MAX_MINTED_NUMBER, "next must be a number"),
        (["ro.1"], True, "next must be a number"),
        # A live link's number at or above next would be handed out again (the same token).
        (["ro.5"], 5, "next must be above every minted link's number"),
        (["rw.1", "web-ro.9"], 3, "next must be above every minted link's number"),
    ):
        with pytest.raises(ProtocolError, match=message):
            Hello.parse({"v": 1, "key": key, "minted": minted, "next": number}, 500, 200)
    hello = Hello.parse({"v": 1, "key": key, "minted": ["web-ro.4", "rw.2", "rw.2"], "next": 5}, 500, 200)
    assert (hello.minted, hello.next_minted) == (("rw.2", "web-ro.4"), 5)


class Link:
    """A host channel that records what the gateway sends it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _config() -> Config:
    return validate_config({"sharing": {"hosts": ["alice", "mallory"], "max_hosted": 1}}, "test")


def _gateway(key: bytes, tasks: list[asyncio.Future[None]] | None = None) -> HostedSessions:
    def spawn(coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        if tasks is not None:
            tasks.append(task)

    hosted = HostedSessions(SharingService(_config()), spawn)
    hosted.key = key
    return hosted


async def test_the_same_login_and_session_key_get_the_same_links_after_a_restart_and_nobody_else_does() -> (
    None
):
    key = link_key([b"host key one", b"host key two"])
    assert key == link_key([b"host key two", b"host key one"])  # the order of host_keys does not matter
    hello = Hello("cd" * 32, ("github:bob",), 80, 24)
    first, resumed = _gateway(key).register(_config(), "alice", hello, Link())
    assert not resumed
    restarted = _gateway(key)
    again, _ = restarted.register(_config(), "alice", hello, Link())
    assert again.commands == first.commands
    other, _ = restarted.register(_config(), "mallory", hello, Link())
    assert set(other.commands.values()).isdisjoint(first.commands.values())
    # A different gateway (other host keys) derives other links from the same request.
    elsewhere, _ = _gateway(link_key([b"another gateway"])).register(_config(), "alice", hello, Link())
    assert set(elsewhere.commands.values()).isdisjoint(first.commands.values())


async def test_a_host_back_within_the_grace_gets_its_session_and_an_expired_one_is_told_so() -> None:
    tasks: list[asyncio.Future[None]] = []
    hosted = _gateway(link_key([b"k"]), tasks)
    hello = Hello("ef" * 32, (), 80, 24)
    link = Link()
    session, _ = hosted.register(_config(), "alice", hello, link)
    await session.process.resize(100, 30)
    session.lost(link, grace=30)
    await session.process.write(b"typed while the host is away")  # dropped, never held
    back = Link()
    again, resumed = hosted.register(_config(), "alice", hello, back)
    assert resumed and again is session
    # Back again before the gateway saw the last connection drop: the newest one takes over.
    stale, back = back, Link()
    hosted.register(_config(), "alice", hello, back)
    assert stale.closed and not back.closed
    with pytest.raises(HostRefused, match=r"already hosts 1 sessions"):
        hosted.register(_config(), "alice", Hello("01" * 32, (), 80, 24), Link())
    await session.process.write(b"ls\r")
    assert FrameDecoder().feed(b"".join(back.sent))[-1].payload == b"ls\r"
    assert all(b"typed while" not in data for data in link.sent + back.sent)
    session.end("bye")
    await asyncio.gather(*tasks)  # the session's task sees its end
    with pytest.raises(HostRefused) as refused:
        hosted.register(_config(), "alice", hello, Link())
    assert refused.value.refusal is Refusal.EXPIRED
    assert back.closed  # the session's end lets go of its host's channel


def test_a_welcome_is_plain_json() -> None:
    frame = FrameDecoder().feed(encode_json(Kind.WELCOME, {"cols": 80}))[0]
    assert frame.json() == {"cols": 80}
    with pytest.raises(ProtocolError, match="not JSON"):
        FrameDecoder().feed(encode(Kind.END, b"{"))[0].json()


def test_a_peers_text_is_printed_without_escape_sequences() -> None:
    assert (
        printable("the shell exited\x1b]0;pwned\x07\x1b[2J (status 3)")
        == "the shell exited]0;pwned[2J (status 3)"
    )
    assert printable(None) == "" and len(printable("x" * 1000)) == 200


def _serving(key: bytes) -> tuple[SharingService, HostedSessions]:
    """A gateway's sharing service with its hosted sessions, as the gateway wires them."""
    service = SharingService(_config())
    service.hosted = HostedSessions(service, asyncio.ensure_future)
    service.hosted.key = key
    return service, service.hosted


def _mint(service: SharingService, access: str) -> str:
    """``+ctl mint``: the new link's id."""
    minted = re.search(r"link (\w+): ssh ", service.control("alice", f"mint {access}"))
    assert minted
    return minted.group(1)


async def test_sizes_and_links_for_a_host_that_is_not_reading_are_kept_to_the_latest() -> None:
    service, hosted = _serving(link_key([b"k"]))
    link = Link()
    session, _ = hosted.register(_config(), "alice", Hello("aa" * 32, (), 80, 24), link)
    session.process.pause_writing()  # the host's channel is full: it is not reading
    for cols in range(20, 1020):  # joiners resizing their windows in a loop
        await session.process.resize(cols, 40)
    for _ in range(1000):  # an owner minting and revoking in a loop (each a REVOKED frame)
        service.control("alice", f"revoke {_mint(service, 'ro')}")
    assert link.sent == []
    session.process.resume_writing()
    frames = FrameDecoder().feed(b"".join(link.sent))
    assert [f.kind for f in frames] == [Kind.RESIZE, Kind.REVOKED]
    assert frames[0].size() == (1019, 40)
    assert frames[1].json() == {"revoked": [], "minted": [], "next": 1000}

    # A host back on a new channel gets the state in its WELCOME: nothing that waited
    # for the old channel follows on the new one.
    session.process.pause_writing()
    _mint(service, "rw")
    back = Link()
    hosted.register(_config(), "alice", Hello("aa" * 32, (), 80, 24), back)
    session.process.resume_writing()
    assert back.sent == [] and session.links_state()["minted"] == ["rw.1000"]
    session.end("bye")


async def test_nothing_is_minted_on_a_hosted_session_while_its_host_is_away() -> None:
    service, hosted = _serving(link_key([b"k"]))
    link = Link()
    hello = Hello("56" * 32, (), 80, 24)
    session, _ = hosted.register(_config(), "alice", hello, link)
    session.lost(link, grace=30)
    # The host could not keep the new number: a restarted gateway would reuse it.
    for access in ("ro", "rw"):
        with pytest.raises(ControlError, match=r"^the host is away: mint once it is back$"):
            service.control("alice", f"mint {access}")
    assert session.links_state() == {"revoked": [], "minted": [], "next": 0}
    back = Link()
    hosted.register(_config(), "alice", hello, back)
    _mint(service, "ro")
    state = FrameDecoder().feed(b"".join(back.sent))[-1].json()
    assert state == {"revoked": [], "minted": ["ro.0"], "next": 1}
    session.end("bye")


def test_a_welcomes_grace_period_is_a_bounded_number_of_seconds() -> None:
    def grace(payload: bytes) -> float:
        return grace_period(FrameDecoder().feed(encode(Kind.WELCOME, payload))[0].json())

    assert grace(b"{}") == 0.0
    assert grace(b'{"grace":120}') == 120.0 and grace(b'{"grace":2.5}') == 2.5
    assert grace(f'{{"grace":{MAX_GRACE}}}'.encode()) == MAX_GRACE
    huge = b'{"grace":1' + b"0" * 400 + b"}"  # float() of it would raise OverflowError
    for bad in (
        huge,
        b'{"grace":true}',
        b'{"grace":-1}',
        b'{"grace":"60"}',
        b'{"grace":NaN}',
        b'{"grace":1e999}',
    ):
        with pytest.raises(ProtocolError, match=f"grace must be a number of seconds from 0 to {MAX_GRACE}"):
            grace(bad)
    # A gateway cannot be configured with a grace period its hosts would refuse.
    with pytest.raises(ConfigError, match="host_grace"):
        validate_config({"sharing": {"host_grace": MAX_GRACE + 1}}, "test")


async def test_links_minted_on_a_hosted_session_come_back_after_a_restart_within_the_cap() -> None:
    key = link_key([b"k"])
    service, hosted = _serving(key)
    link = Link()
    session, _ = hosted.register(_config(), "alice", Hello("12" * 32, (), 80, 24), link)
    kept = re.search(r"link \w+: ssh -p \d+ (rw-\w+)@", service.control("alice", "mint rw"))
    dropped = re.search(r"link (\w+): ssh -p \d+ (ro-\w+)@", service.control("alice", "mint ro"))
    assert kept and dropped
    service.control("alice", f"revoke {dropped.group(1)}")
    # The host is told what to keep: the live minted links' labels, and the next number.
    state = FrameDecoder().feed(b"".join(link.sent))[-1]
    assert state.kind is Kind.REVOKED
    assert state.json() == {"revoked": [], "minted": ["rw.0"], "next": 2}
    session.end("restart")

    service, hosted = _serving(key)
    hello = Hello.parse({"v": 1, "key": "12" * 32, **state.json()}, 500, 200)
    hosted.register(_config(), "alice", hello, Link())
    assert service.joinable(kept.group(1)) is not None
    assert service.joinable(dropped.group(2)) is None
    again = re.search(r"(ro-\w+)@", service.control("alice", "mint ro"))
    assert again and again.group(1) != dropped.group(2)  # number 1 is never used again

    # A host naming more links than a session may hold gets the cap's worth back.
    service, hosted = _serving(key)
    crowded = Hello(
        "34" * 32, (), 80, 24, minted=tuple(f"ro.{n}" for n in range(MAX_LINKS)), next_minted=MAX_LINKS
    )
    session, _ = hosted.register(_config(), "alice", crowded, Link())
    assert len(session.shared.active_links()) == MAX_LINKS
    with pytest.raises(ControlError, match=f"{MAX_LINKS} live links"):
        service.control("alice", "mint rw")
    session.end("done")
