"""The shared Terminal: one PTY program, its owner, and the people watching it.

A :class:`Terminal` sits between a PTY :class:`~pairpod.backends.base.Process`
and its participants. It calls each participant's :class:`Sink` (``write``,
``notify``, ``close``); the participant's channel calls its
:class:`Participant` (``send_input``, ``resize``, ``pause_writing`` /
``resume_writing``, ``leave``). It knows no SSH: tests drive it with plain
objects.

- **Output.** The owner gets each chunk at once and its flow control is the
  program's: while the owner is paused, :meth:`Terminal.run` stops reading,
  as in an unshared session. Viewers get batches (:meth:`Terminal.flush`)
  and each may queue ``viewer_backlog`` bytes and take :data:`VIEWER_RATE`;
  past either it is *behind* and gets a :class:`ScreenModel` snapshot
  instead, so a slow viewer costs bounded memory and never slows anyone.
- **Input.** Read-write participants' chunks reach the program whole, in
  arrival order; read-only participants' are dropped (they are told once);
  terminal replies are stripped from viewers' input (:meth:`Terminal._input`).
- **Size.** The smallest read-write participant, owner included, as tmate
  does; read-only viewers do not count (:meth:`Terminal._update_size`).
- **Notices** (who joined or left) show on one row in reverse video, only
  where the stream is between escape sequences, and that row is redrawn from
  the model a few seconds later (:meth:`Terminal._show_waiting_notices`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pairpod.backends.base import Process, Stream
from pairpod.errors import PairpodError
from pairpod.log import fields, get_logger
from pairpod.sharing.screen import EscapeTracker, ScreenModel
from pairpod.sharing.tokens import Access

log = get_logger("sharing")

#: How long a notice stays on screen, in seconds.
NOTICE_SECONDS = 5.0
#: Output bytes per second one viewer gets live (also the burst); past it, the
#: viewer is redrawn from snapshots. Far above interactive use: it only binds
#: under floods (``cat`` of a big file), which nobody can read live anyway.
VIEWER_RATE = 512 * 1024
#: How often (at most) viewers that are behind but writable are redrawn, in
#: seconds; longer when a redraw is costly.
RESYNC_INTERVAL = 1.0
#: What viewers are told when the session ends without a more specific reason.
SESSION_ENDED = "the shared session has ended"
OWNER_LEFT = "the owner has left; the shared session has ended"
KICKED = "you were removed from the session by its owner"

_READ_SIZE = 1 << 16
# Viewers' output is batched up to this size before the end of the loop turn.
_FLUSH_BYTES = 1 << 15
_FLUSH_INTERVAL = 0.005
# Output up to this size after a participant's keystroke (its echo) is flushed
# at once, not at the next interval: typing stays as fast as unshared.
_ECHO_BYTES = 512
# The share of time redraws during a flood may take (see _resync_tick).
_RESYNC_SHARE = 0.03
# While the screen model has output pending, parse a little every so often.
_IDLE_PARSE_DELAY = 0.05

# What a viewer's terminal is left with when we let go of it: attributes and
# scroll region reset, no mouse or paste modes, normal keypad, ASCII, cursor
# shown (and the normal screen: see _release). CAN/ST first end anything it
# was in the middle of. Resetting the scroll region homes the cursor, so it is
# saved and restored around it (the program is done with that slot): the
# farewell then follows the last output instead of overwriting the second row.
RELEASE = (
    "\x18\x1b\\\x1b[0m\x1b7\x1b[r\x1b8"
    "\x1b[?1;1000;1001;1002;1003;1004;1005;1006;1015;1016;2004l"
    "\x1b>\x1b(B\x0f\x1b[?25h"
)

# Answers a terminal sends on its own to a program's queries: device attributes
# (CSI ? ... c, CSI > ... c), cursor position (CSI r;c R), mode reports
# (CSI ? ... $ y), OSC replies (colours, clipboard) and DCS replies (XTGETTCAP).
_TERMINAL_REPLIES = re.compile(
    rb"\x1b\[[?>][0-9;]*c"
    rb"|\x1b\[[0-9]+;[0-9]+R"
    rb"|\x1b\[\??[0-9;]*\$y"
    rb"|\x1b\][0-9]+;[^\x07\x1b]*(?:\x07|\x1b\\)"
    rb"|\x1bP[^\x1b]*\x1b\\"
)


def strip_terminal_replies(data: bytes) -> bytes:
    """Remove a terminal's automatic replies to queries from a viewer's input."""
    if b"\x1b" not in data:
        return data
    return _TERMINAL_REPLIES.sub(b"", data)


class TerminalEnded(PairpodError):
    """The shared terminal has ended; nobody can join it any more."""

    user_message = "the shared session has ended"


class Sink(ABC):
    """The Terminal's side of one participant's channel.

    ``write`` must not block: an SSH channel buffers and reports back-pressure
    through :meth:`Participant.pause_writing` / :meth:`Participant.resume_writing`
    (AsyncSSH calls ``pause_writing`` from inside ``write`` once its buffer is
    past the high-water mark; that is expected).
    """

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Terminal output for this participant, in order."""

    def notify(self, text: str) -> None:  # noqa: B027 - optional hook
        """A notice for this participant (already shown on screen; log it or ignore it)."""

    def resized(self, cols: int, rows: int) -> None:  # noqa: B027 - optional hook
        """The shared PTY's size, told before the output drawn for it (a web page's terminal
        follows it; an SSH client draws into its own window and ignores it)."""

    @abstractmethod
    def close(self, reason: str) -> None:
        """The Terminal is done with this participant (kicked, or the session ended).

        The reason has already been written to the terminal; close the channel.
        """


@dataclass(frozen=True)
class ParticipantInfo:
    """A participant as the owner's control interface lists them."""

    id: int
    name: str
    access: Access
    owner: bool
    cols: int
    rows: int
    behind: bool
    resyncs: int
    dropped_bytes: int


class Participant:
    """One person's view of a Terminal: what their channel handler calls."""

    def __init__(
        self,
        terminal: Terminal,
        participant_id: int,
        sink: Sink,
        *,
        name: str,
        access: Access,
        cols: int,
        rows: int,
        owner: bool,
        notices: bool,
    ) -> None:
        self.id = participant_id
        self.name = name
        self.access = access
        self.owner = owner
        self.cols = max(cols, 1)
        self.rows = max(rows, 1)
        self.sink = sink
        self._terminal = terminal
        self._notices = notices
        self.paused = False
        self.behind = False
        self.left = False
        self.queue: deque[bytes] = deque()
        self.queued = 0
        #: How many times this viewer fell behind and was redrawn.
        self.resyncs = 0
        #: Output bytes this viewer never got (dropped while behind).
        self.dropped_bytes = 0
        #: Input bytes discarded (read-only participants).
        self.ignored_input = 0
        # The viewer's share of output (a token bucket, see Terminal._deliver).
        self.tokens = float("inf")
        self.stamp = 0.0
        self.told_small = False
        self.told_read_only = False
        # The notice on screen (row) and the one waiting for a safe point.
        self.notice_row: int | None = None
        self.notice_waiting: str | None = None
        self.notice_expired = False
        self.notice_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Participant {self.id} {self.name} {self.access.value}>"

    async def send_input(self, data: bytes) -> None:
        """Keystrokes from this participant: merged in for read-write, dropped for read-only.

        Waits while the program is not reading its input (back-pressure for
        the caller's channel).
        """
        await self._terminal._input(self, data)

    def resize(self, cols: int, rows: int) -> None:
        """This participant's window changed size."""
        self._terminal._resize(self, cols, rows)

    def pause_writing(self) -> None:
        """This participant's channel is not keeping up (AsyncSSH ``pause_writing``)."""
        self.paused = True
        if self.owner:
            self._terminal._owner_writable.clear()

    def resume_writing(self) -> None:
        """This participant's channel drained (AsyncSSH ``resume_writing``)."""
        self._terminal._resume(self)

    def leave(self) -> None:
        """This participant's channel closed. The owner leaving ends the Terminal."""
        self._terminal._leave(self)

    def info(self) -> ParticipantInfo:
        """A snapshot of this participant for listings."""
        return ParticipantInfo(
            self.id,
            self.name,
            self.access,
            self.owner,
            self.cols,
            self.rows,
            self.behind,
            self.resyncs,
            self.dropped_bytes,
        )


class _NoOwner(Sink):
    """The owner's sink of a standing session: there is no owner's channel."""

    def write(self, data: bytes) -> None:
        """Nothing to write to."""

    def close(self, reason: str) -> None:
        """Nothing to close."""


class Terminal:
    """A PTY program shared between its owner and any number of viewers.

    ``owner_sink=None`` makes a *standing* session (``pairpod pair``): no
    owner's channel; the read-write joiners alone size the PTY, and the
    joiners are told of each other's arrivals and departures.
    """

    def __init__(
        self,
        process: Process,
        owner_sink: Sink | None,
        *,
        owner_name: str,
        cols: int,
        rows: int,
        viewer_backlog: int,
        viewer_rate: int = VIEWER_RATE,
        notice_seconds: float = NOTICE_SECONDS,
        screen: ScreenModel | None = None,
    ) -> None:
        self._process = process
        self._backlog = viewer_backlog
        self._viewer_rate = viewer_rate
        self._resync_interval = RESYNC_INTERVAL
        self._resync_handle: asyncio.TimerHandle | None = None
        self._notice_seconds = notice_seconds
        self._size = (max(cols, 1), max(rows, 1))
        self._screen = screen if screen is not None else ScreenModel(*self._size)
        self._tracker = EscapeTracker()
        self._ids = itertools.count(1)
        self.standing = owner_sink is None
        self.owner = Participant(
            self,
            0,
            owner_sink if owner_sink is not None else _NoOwner(),
            name=owner_name,
            access=Access.READ_WRITE,
            cols=cols,
            rows=rows,
            owner=True,
            notices=True,
        )
        # A standing session starts as if its owner had left (without ending it).
        self.owner.left = self.standing
        self._viewers: dict[int, Participant] = {}
        # Output published but not yet modelled (tracker, screen) nor sent to viewers.
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._last_flush = float("-inf")
        # Input reached the program since the last flush: small output is its echo.
        self._typed = False
        self._flush_handle: asyncio.Handle | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._owner_writable = asyncio.Event()
        self._owner_writable.set()
        self._input_lock = asyncio.Lock()
        # The PTY size wanted and applied, by generation: a worker task applies
        # the latest size, in order, so resizes never race each other.
        self._size_generation = 0
        self._size_applied = 0
        self._size_wanted = asyncio.Event()
        self._size_settled = asyncio.Event()
        self._size_settled.set()
        self._size_task: asyncio.Task[None] | None = None
        self._notices_waiting = False
        self._ended = asyncio.Event()
        self.end_reason: str | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._cancelled_by_end = False

    # --- what the owner's channel handler runs ------------------------------------

    async def run(self, farewell: Callable[[], str] | None = None) -> None:
        """Pump the program's output to everyone until it ends, then end the Terminal.

        Returns when the program's output ends or when the Terminal is ended
        (owner left, :meth:`end`); cancelling it ends the Terminal too.
        ``farewell`` says what viewers are told when the output ends (asked
        then, so it can name the program's exit status).
        """
        task = asyncio.current_task()
        self._run_task = task
        try:
            while not self._ended.is_set():
                if not self._owner_writable.is_set():
                    await self._owner_writable.wait()
                    continue
                data = await self._process.read(Stream.STDOUT, _READ_SIZE)
                if not data:
                    break
                self.publish(data)
        except asyncio.CancelledError:
            # end() interrupts a pending read this way; any other cancel goes on.
            if not (self._cancelled_by_end and task is not None and task.uncancel() == 0):
                raise
        finally:
            self._run_task = None
            self.end(farewell() if farewell is not None else SESSION_ENDED)

    def publish(self, data: bytes) -> None:
        """Deliver one chunk of the program's output (``run`` calls this)."""
        if self._ended.is_set() or not data:
            return
        if not self.owner.left:
            self._deliver(self.owner, data)
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= _FLUSH_BYTES or (self._typed and self._batch_bytes <= _ECHO_BYTES):
            self.flush()
        elif self._flush_handle is None:
            # Right away after a quiet spell (a keystroke's echo), else at
            # most every _FLUSH_INTERVAL: a flood then costs each viewer (and
            # the model) a write per interval, not one per chunk read.
            loop = asyncio.get_running_loop()
            delay = self._last_flush + _FLUSH_INTERVAL - loop.time()
            self._flush_handle = (
                loop.call_later(delay, self.flush) if delay > 0 else loop.call_soon(self.flush)
            )
        if self._notices_waiting:
            self._show_waiting_notices()

    # --- joining, leaving, ending ---------------------------------------------------

    def join(
        self, sink: Sink, *, name: str, access: Access, cols: int, rows: int, notices: bool = True
    ) -> Participant:
        """Attach a viewer: it gets the current screen at once, then live output.

        ``notices=False`` keeps on-screen notices out of this viewer's stream
        (for a recorder, say); they still reach ``sink.notify``.
        """
        if self._ended.is_set():
            raise TerminalEnded(f"join after the terminal ended ({self.end_reason})")
        # Existing viewers first get everything published so far; the joiner's
        # snapshot covers exactly the same output, so nothing is lost or doubled.
        self.flush()
        participant = Participant(
            self,
            next(self._ids),
            sink,
            name=name,
            access=access,
            cols=cols,
            rows=rows,
            owner=False,
            notices=notices,
        )
        snapshot = self._snapshot()
        participant.tokens = float(self._viewer_rate)
        participant.stamp = asyncio.get_running_loop().time()
        self._viewers[participant.id] = participant
        self._sink_write(participant, snapshot)
        if participant.left:  # its channel failed already
            return participant
        log.info(
            "sharing.join",
            extra=fields(
                participant=participant.id,
                name=name,
                access=access.value,
                viewers=len(self._viewers),
                snapshot_bytes=len(snapshot),
            ),
        )
        self._tell_owner(f"{name} joined ({access.label}); {self._count()}", about=participant)
        self._update_size()
        return participant

    def kick(self, participant_id: int, reason: str = KICKED) -> bool:
        """Remove one viewer, telling them why. False if there is no such viewer."""
        participant = self._viewers.get(participant_id)
        if participant is None:
            return False
        self._release(participant, reason)
        log.info("sharing.kick", extra=fields(participant=participant.id, name=participant.name))
        self._tell_owner(f"{participant.name} was removed; {self._count()}")
        self._update_size()
        return True

    def announce(self, text: str) -> None:
        """Show everyone a notice about the session itself (its host went away, came back)."""
        if self._ended.is_set():
            return
        for participant in (self.owner, *self._viewers.values()):
            if not participant.left:
                self._notice(participant, text)

    def end(self, reason: str = SESSION_ENDED) -> None:
        """End the Terminal: every viewer is told ``reason`` and closed. Idempotent."""
        if self._ended.is_set():
            return
        self.flush()
        self.end_reason = reason
        self._ended.set()
        for participant in list(self._viewers.values()):
            self._release(participant, reason)
        for handle in (self._flush_handle, self._idle_handle, self._resync_handle, self.owner.notice_timer):
            if handle is not None:
                handle.cancel()
        if self._size_task is not None:
            self._size_task.cancel()
        self._owner_writable.set()  # let run() see the end
        run_task = self._run_task
        if run_task is not None and run_task is not asyncio.current_task():
            self._cancelled_by_end = True
            run_task.cancel()
        self._size_settled.set()
        log.info("sharing.end", extra=fields(reason=reason))

    @property
    def ended(self) -> bool:
        """True once the Terminal has ended."""
        return self._ended.is_set()

    async def wait_ended(self) -> str:
        """Wait for the end; return its reason."""
        await self._ended.wait()
        assert self.end_reason is not None
        return self.end_reason

    def participants(self) -> list[ParticipantInfo]:
        """The owner and the viewers, in order of arrival."""
        people = [self.owner] if not self.owner.left else []
        return [p.info() for p in (*people, *self._viewers.values())]

    @property
    def size(self) -> tuple[int, int]:
        """The PTY size the Terminal wants, ``(cols, rows)``."""
        return self._size

    async def settle(self) -> None:
        """Wait until the PTY has the size the Terminal wants."""
        await self._size_settled.wait()

    @property
    def screen(self) -> ScreenModel:
        """The screen model, fed all output so far (for the control interface and tests)."""
        self.flush()
        return self._screen

    # --- participants' events -------------------------------------------------------

    async def _input(self, participant: Participant, data: bytes) -> None:
        """A participant's keystrokes: dropped for read-only ones; from viewers,
        without their terminal's replies to the program's queries (the program
        asked once and gets its answer from the owner's terminal only)."""
        if participant.left or self._ended.is_set() or not data:
            return
        if participant.access is Access.READ_ONLY:
            participant.ignored_input += len(data)
            if not participant.told_read_only:
                participant.told_read_only = True
                self._notice(participant, "read-only: your keystrokes are not sent")
            return
        if not participant.owner:
            data = strip_terminal_replies(data)
            if not data:
                return
        async with self._input_lock:
            # A worker applies window changes: keys typed after one reach the
            # program once the PTY has that size, as through a single terminal.
            await self._size_settled.wait()
            if self._ended.is_set():
                return
            self._typed = True  # before the write: the echo may come back while it drains
            await self._process.write(data)

    def _resize(self, participant: Participant, cols: int, rows: int) -> None:
        if participant.left or self._ended.is_set():
            return
        participant.cols, participant.rows = max(cols, 1), max(rows, 1)
        self._update_size()

    def _resume(self, participant: Participant) -> None:
        participant.paused = False
        if participant.owner:
            self._owner_writable.set()
            return
        if participant.left or self._ended.is_set():
            return
        if participant.behind:
            # Everyone else first, so the snapshot and the live stream meet exactly.
            self.flush()
            self._redraw(participant, self._snapshot())
            log.info(
                "sharing.resync", extra=fields(participant=participant.id, dropped=participant.dropped_bytes)
            )
        elif participant.queue:
            data = b"".join(participant.queue)
            participant.queue.clear()
            participant.queued = 0
            self._sink_write(participant, data)

    def _leave(self, participant: Participant) -> None:
        if participant.left:
            return
        if participant.owner:
            participant.left = True
            self.end(OWNER_LEFT)
            return
        self._forget(participant)
        log.info("sharing.leave", extra=fields(participant=participant.id, name=participant.name))
        self._tell_owner(f"{participant.name} left; {self._count()}")
        self._update_size()

    # --- output ---------------------------------------------------------------------

    def flush(self) -> None:
        """Model and deliver to viewers now what ``publish`` batched.

        The first output after a quiet spell is flushed in the same loop turn,
        then at most every 5 ms or 32 KiB while output streams: a fast program
        costs each viewer one write per batch, not one per chunk. Everything
        that reads the tracker or the screen model flushes first, so they
        always reflect all output published so far.
        """
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._batch:
            return
        self._last_flush = asyncio.get_running_loop().time()
        self._typed = False
        data = self._batch[0] if len(self._batch) == 1 else b"".join(self._batch)
        self._batch.clear()
        self._batch_bytes = 0
        self._tracker.feed(data)
        self._screen.feed(data)
        for participant in list(self._viewers.values()):
            self._deliver(participant, data)
        if self._screen.advance() and self._idle_handle is None:
            self._idle_handle = asyncio.get_running_loop().call_later(_IDLE_PARSE_DELAY, self._idle_parse)

    def _snapshot(self) -> bytes:
        # The screen as of everything published, plus the sequence the output
        # is in the middle of, so that the next chunk continues it.
        self.flush()
        return self._screen.snapshot() + self._tracker.tail()

    def _deliver(self, participant: Participant, data: bytes) -> None:
        if participant.behind:
            participant.dropped_bytes += len(data)
            return
        if participant.owner:
            self._sink_write(participant, data)
            return
        if self._viewer_rate:
            # A viewer's share of a flood is capped: past it, it is redrawn
            # from snapshots instead (see _resync_tick).
            now = asyncio.get_running_loop().time()
            participant.tokens = min(
                float(self._viewer_rate), participant.tokens + (now - participant.stamp) * self._viewer_rate
            )
            participant.stamp = now
            if participant.tokens < len(data):
                self._fall_behind(participant, len(data), "rate")
                return
            participant.tokens -= len(data)
        if not participant.paused and not participant.queue:
            self._sink_write(participant, data)
            return
        if participant.queued + len(data) > self._backlog:
            self._fall_behind(participant, len(data), "backlog")
            return
        participant.queue.append(data)
        participant.queued += len(data)

    def _fall_behind(self, participant: Participant, size: int, why: str) -> None:
        participant.behind = True
        participant.dropped_bytes += participant.queued + size
        participant.queue.clear()
        participant.queued = 0
        # A notice on their screen is gone with the redraw they will get.
        participant.notice_row = None
        participant.notice_waiting = None
        log.debug("sharing.behind", extra=fields(participant=participant.id, why=why))
        if self._resync_handle is None:
            self._resync_handle = asyncio.get_running_loop().call_later(
                self._resync_interval, self._resync_tick
            )

    def _resync_tick(self) -> None:
        """Redraw viewers that are behind but whose channel is writable, if their
        share allows; one snapshot serves them all."""
        self._resync_handle = None
        if self._ended.is_set():
            return
        now = asyncio.get_running_loop().time()
        snapshot: bytes | None = None
        waiting = False
        for participant in list(self._viewers.values()):
            if not participant.behind or participant.paused:
                continue  # a paused channel is redrawn when it drains
            if self._viewer_rate:
                participant.tokens = min(
                    float(self._viewer_rate),
                    participant.tokens + (now - participant.stamp) * self._viewer_rate,
                )
                participant.stamp = now
                if participant.tokens <= 0:
                    waiting = True
                    continue
            if snapshot is None:
                self.flush()
                started = time.perf_counter()
                snapshot = self._snapshot()
                # A redraw during a flood means parsing the model's tail: keep
                # that to a small share of the time, however slow pyte is here.
                self._resync_interval = max(RESYNC_INTERVAL, (time.perf_counter() - started) / _RESYNC_SHARE)
            self._redraw(participant, snapshot)
            participant.tokens -= len(snapshot)
        if waiting:
            self._resync_handle = asyncio.get_running_loop().call_later(
                self._resync_interval, self._resync_tick
            )

    def _redraw(self, participant: Participant, snapshot: bytes) -> None:
        participant.behind = False
        participant.resyncs += 1
        participant.notice_row = None
        self._sink_write(participant, snapshot)

    def _sink_write(self, participant: Participant, data: bytes) -> None:
        try:
            participant.sink.write(data)
        except Exception:  # a broken channel must not break anyone else
            log.warning(
                "sharing.write_failed",
                exc_info=True,
                extra=fields(participant=participant.id, name=participant.name),
            )
            if participant.owner:
                participant.left = True
                self.end(OWNER_LEFT)
            else:
                self._forget(participant)
                self._update_size()

    def _idle_parse(self) -> None:
        self._idle_handle = None
        if not self._ended.is_set() and self._screen.advance():
            self._idle_handle = asyncio.get_running_loop().call_later(_IDLE_PARSE_DELAY, self._idle_parse)

    # --- size -----------------------------------------------------------------------

    def _update_size(self) -> None:
        """Size the PTY to the smallest read-write participant (columns and rows
        apart); tell a viewer smaller than that once, and the owner when someone
        else made it smaller than their window."""
        if self._ended.is_set():
            return
        writers = [
            p for p in (self.owner, *self._viewers.values()) if p.access is Access.READ_WRITE and not p.left
        ]
        if writers:
            wanted = (min(p.cols for p in writers), min(p.rows for p in writers))
            if wanted != self._size:
                self._size = wanted
                self.flush()  # the model resizes after the output before it
                self._screen.resize(*wanted)
                self._size_generation += 1
                self._size_settled.clear()
                self._size_wanted.set()
                if self._size_task is None:
                    self._size_task = asyncio.get_running_loop().create_task(self._apply_sizes())
                owner = self.owner
                if not owner.left and (owner.cols > wanted[0] or owner.rows > wanted[1]):
                    self._notice(
                        owner, f"terminal is {wanted[0]}x{wanted[1]} to fit the smallest read-write window"
                    )
        cols, rows = self._size
        for viewer in self._viewers.values():
            if not viewer.told_small and (viewer.cols < cols or viewer.rows < rows):
                viewer.told_small = True
                self._notice(
                    viewer,
                    f"your window ({viewer.cols}x{viewer.rows}) is smaller "
                    f"than the shared terminal ({cols}x{rows})",
                )

    async def _apply_sizes(self) -> None:
        while True:
            await self._size_wanted.wait()
            self._size_wanted.clear()
            generation, (cols, rows) = self._size_generation, self._size
            try:
                await self._process.resize(cols, rows)
            except Exception:
                log.warning("sharing.resize_failed", exc_info=True)
            self._size_applied = generation
            if self._size_applied == self._size_generation:
                self._size_settled.set()

    # --- notices --------------------------------------------------------------------

    def _count(self) -> str:
        count = len(self._viewers)
        return f"{count} viewer{'' if count == 1 else 's'} now"

    def _tell_owner(self, text: str, about: Participant | None = None) -> None:
        if self._ended.is_set():
            return
        if self.standing:
            # Nobody owns a standing session: everyone else in it is told.
            for viewer in list(self._viewers.values()):
                if viewer is not about:
                    self._notice(viewer, text)
        elif not self.owner.left:
            self._notice(self.owner, text)

    def _notice(self, participant: Participant, text: str) -> None:
        text = f"pairpod: {text}"
        with contextlib.suppress(Exception):
            participant.sink.notify(text)
        if not participant._notices or participant.behind:
            return
        participant.notice_waiting = text
        self._notices_waiting = True
        self._show_waiting_notices()

    def _show_waiting_notices(self) -> None:
        """Draw waiting notices and clear expired ones, if the stream is at a safe point.

        A full-screen program owns every cell, so a notice cannot scroll in as
        a line: it takes one row (the last the participant sees, or the first
        when the cursor is on the last) and every piece of terminal state it
        touches is put back from the model at once, without the terminal's
        save-cursor slot (the program may be using it).
        """
        self.flush()
        if not self._tracker.at_ground:
            return  # mid-sequence: try again after the next chunk
        self._notices_waiting = False
        for participant in (self.owner, *self._viewers.values()):
            if participant.left or participant.behind:
                continue
            if participant.notice_waiting is not None:
                row = self._notice_row(participant)
                data = self._screen.render_notice(
                    participant.notice_waiting, row, restore_row=participant.notice_row
                )
                participant.notice_waiting = None
                participant.notice_expired = False
                participant.notice_row = row
                self._deliver(participant, data)
                if participant.notice_timer is not None:
                    participant.notice_timer.cancel()
                participant.notice_timer = asyncio.get_running_loop().call_later(
                    self._notice_seconds, self._expire_notice, participant
                )
            elif participant.notice_expired:
                participant.notice_expired = False
                if participant.notice_row is not None:
                    data = self._screen.render_rows([participant.notice_row])
                    participant.notice_row = None
                    self._deliver(participant, data)

    def _expire_notice(self, participant: Participant) -> None:
        participant.notice_timer = None
        if participant.left or self._ended.is_set():
            return
        participant.notice_expired = True
        self._notices_waiting = True
        self._show_waiting_notices()

    def _notice_row(self, participant: Participant) -> int:
        rows = self._screen.size[1]
        row = min(participant.rows, rows) - 1
        _, cursor_row = self._screen.cursor()
        return 0 if cursor_row == row and row > 0 else row

    # --- letting go of viewers -------------------------------------------------------

    def _forget(self, participant: Participant) -> None:
        participant.left = True
        self._viewers.pop(participant.id, None)
        participant.queue.clear()
        participant.queued = 0
        if participant.notice_timer is not None:
            participant.notice_timer.cancel()
            participant.notice_timer = None

    def _release(self, participant: Participant, reason: str) -> None:
        self.flush()
        self._forget(participant)
        # Straight to the sink, past any queue: the viewer is leaving and what
        # it has not received yet no longer matters.
        # Leave the alternate screen only if on it: with nothing saved, ?1049l
        # would send the cursor home and the message over the last output.
        # (From the raw stream: catching up the model here would cost the
        # owner a parse of everything pending, at the end of every session.)
        in_alt = self._tracker.in_alt
        leave_alt = "\x1b[?1049l" if in_alt else ""
        newline = "\r\n" if in_alt or not self._tracker.at_line_start else ""
        farewell = f"{RELEASE}{leave_alt}{newline}pairpod: {reason}\r\n".encode()
        with contextlib.suppress(Exception):
            participant.sink.write(farewell)
        with contextlib.suppress(Exception):
            participant.sink.notify(f"pairpod: {reason}")
        try:
            participant.sink.close(reason)
        except Exception:
            log.warning("sharing.close_failed", exc_info=True, extra=fields(participant=participant.id))
