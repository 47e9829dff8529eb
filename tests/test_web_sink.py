"""The web viewer's Sink without a network: order of output and status, back-pressure, the end."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from pairpod.sharing.joinable import Seat
from pairpod.web.sink import WebSink


class Socket:
    """Records what is sent; ``gate`` (when cleared) holds every binary send, like a peer not reading."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send_bytes(self, data: bytes) -> None:
        await self.gate.wait()
        self.sent.append(data)

    async def send_str(self, data: str) -> None:
        self.sent.append(json.loads(data))


class Flow:
    """What the Terminal's participant is told about this viewer's channel."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


async def test_output_status_and_end_arrive_in_order() -> None:
    sink = WebSink(sent_size=(80, 24))
    socket = Socket()
    pump = asyncio.create_task(sink.pump(socket))
    sink.resized(80, 24)  # the size the page was given: nothing to tell it
    sink.write(b"one ")
    sink.write(b"two")  # consecutive output: one message
    sink.notify("pairpod: hello")
    sink.resized(60, 20)
    sink.write(b"three")
    sink.close("kicked")
    await asyncio.wait_for(pump, 5)  # the pump ends with the end message
    assert socket.sent == [
        b"one two",
        {"type": "notice", "text": "pairpod: hello"},
        {"type": "size", "cols": 60, "rows": 20},
        b"three",
        {"type": "end", "reason": "kicked"},
    ]
    assert sink.ended == "kicked"


async def test_a_peer_that_does_not_read_pauses_the_participant_until_it_drains() -> None:
    sink = WebSink(sent_size=(80, 24), high=1000, low=100)
    flow = Flow()
    sink.attach(cast(Seat, flow))
    socket = Socket()
    socket.gate.clear()
    pump = asyncio.create_task(sink.pump(socket))
    for _ in range(20):
        sink.write(b"x" * 100)
    assert flow.calls == ["pause"]  # once, past the high-water mark
    socket.gate.set()
    sink.close("done")
    await asyncio.wait_for(pump, 5)
    assert flow.calls == ["pause", "resume"]
    assert sum(len(m) for m in socket.sent if isinstance(m, bytes)) == 2000


class StalledSocket(Socket):
    """A peer that reads nothing at all while ``gate`` is cleared (status messages neither)."""

    async def send_str(self, data: str) -> None:
        await self.gate.wait()
        await super().send_str(data)


async def test_notices_to_a_page_that_does_not_read_are_kept_to_the_latest() -> None:
    # In a standing session every join and leave is a notice to everyone: a browser
    # that stops reading while someone joins and leaves in a loop must not queue them all.
    sink = WebSink(sent_size=(80, 24))
    socket = StalledSocket()
    socket.gate.clear()
    pump = asyncio.create_task(sink.pump(socket))
    for count in range(10_000):
        sink.notify(f"pairpod: web viewer joined (read-only); {count} viewers now")
    socket.gate.set()
    sink.close("done")
    await asyncio.wait_for(pump, 5)
    notices = [m["text"] for m in socket.sent if isinstance(m, dict) and m["type"] == "notice"]
    assert notices == ["pairpod: web viewer joined (read-only); 9999 viewers now"]
