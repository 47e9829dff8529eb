"""An SSH channel as a shared Terminal's participant sees it (its Sink)."""

from __future__ import annotations

import contextlib

import asyncssh

from pairpod.sharing.terminal import Sink
from pairpod.traffic import Traffic


def exit_channel(chan: asyncssh.SSHServerChannel[bytes], code: int) -> None:
    """End a channel with ``code``, unless it is already gone."""
    with contextlib.suppress(OSError, asyncssh.Error):
        chan.exit(code)


class ChannelSink(Sink):
    """A participant's SSH channel, as the Terminal sees it."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], traffic: Traffic | None = None) -> None:
        self._chan = chan
        self._traffic = traffic

    def write(self, data: bytes) -> None:
        """Terminal output to this participant."""
        if self._traffic is not None:
            self._traffic.sent += len(data)
        with contextlib.suppress(OSError, asyncssh.Error):
            self._chan.write(data)

    def close(self, reason: str) -> None:
        """The Terminal let go of this participant (already told why)."""
        exit_channel(self._chan, 0)
