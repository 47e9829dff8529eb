"""Program output on its way to a channel: every byte in order, reads bounded, memory bounded."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import importlib.util
import os

import pytest

from pairpod.backends.base import Identity, ProcessSpec, Stream
from pairpod.backends.fdwriter import FdWriter
from pairpod.backends.local import LocalBackend, LocalProcess, OutputReader
from pairpod.backends.output import HIGH_WATER, OutputPipe
from pairpod.config import Config
from pairpod.eventloop import LoopChoice, run
from tests.support.docker_backend import eventually


async def test_output_pipe_hands_out_every_byte_in_order_within_the_read_size() -> None:
    pipe = OutputPipe()
    # Small pieces (as a program writing lines makes) and one larger than a read.
    pieces = [bytes([n % 251]) * (1 + n * 37 % 200) for n in range(300)]
    pieces.insert(150, b"L" * 10_000)
    for piece in pieces:
        pipe.feed(piece)
    pipe.end()
    reads = []
    while data := await pipe.read(4096):
        reads.append(data)
    assert b"".join(reads) == b"".join(pieces)
    assert max(map(len, reads)) <= 4096
    # Small chunks waiting together come out joined, not one read each.
    assert len(reads) < len(pieces) // 10
    assert pipe.size == 0


async def test_a_program_writing_faster_than_anyone_reads_is_held_back() -> None:
    config = Config()
    identity = Identity(username="u", conn_id="output-test", remote_addr="127.0.0.1", config=config)
    environment = await LocalBackend(config, "test").open(identity)
    size = 32 * HIGH_WATER
    try:
        process = await environment.start(ProcessSpec(command=f"head -c {size} /dev/zero"))
        assert isinstance(process, LocalProcess)
        stdout = process._stdout
        # Nobody reads: the gateway stops reading the pipe instead of buffering it all.
        await eventually(lambda: stdout.flow.paused, "reading the full pipe paused")
        buffered = stdout.pipe.size
        assert HIGH_WATER < buffered < 2 * HIGH_WATER
        digest = hashlib.sha256()
        total = 0
        while data := await process.read(Stream.STDOUT, 1 << 18):
            digest.update(data)
            total += len(data)
        assert total == size
        assert digest.hexdigest() == hashlib.sha256(bytes(size)).hexdigest()
        assert (await process.wait()).code == 0
    finally:
        await environment.close()


LOOPS: list[LoopChoice] = ["asyncio", "uvloop"] if importlib.util.find_spec("uvloop") else ["asyncio"]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("loop", LOOPS)
def test_input_written_before_its_end_all_reaches_the_reader_then_the_end(loop: LoopChoice) -> None:
    # More than the pipe holds: most of it still waits in the writer when the end comes.
    payload = os.urandom(3 << 20)
    received = bytearray()

    async def main() -> None:
        r, w = os.pipe()
        writer = FdWriter(w)
        writer.write(payload)
        writer.finish()
        assert writer.is_closing()
        writer.write(b"after the end")  # dropped, not sent
        while chunk := await asyncio.get_running_loop().run_in_executor(None, os.read, r, 1 << 16):
            received.extend(chunk)
        os.close(r)

    run(main(), loop)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("loop", LOOPS)
def test_closing_a_programs_pipes_closes_each_descriptor_once(loop: LoopChoice) -> None:
    # A descriptor closed twice closes whatever another thread opened under the
    # same number in between (a listener, a Redis connection): after close()
    # the number is free, and what takes it next stays open.
    async def main() -> None:
        out_r, out_w = os.pipe()
        in_r, in_w = os.pipe()
        reader = OutputReader(out_r)
        writer = FdWriter(in_w)
        os.write(out_w, b"output")
        assert await reader.read(100) == b"output"
        writer.write(b"input")
        reader.close()
        writer.close()
        assert not _is_open(out_r) and not _is_open(in_w)
        sentinel = os.open(os.devnull, os.O_RDONLY)
        taken = [os.dup2(sentinel, fd) for fd in (out_r, in_w)]
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        assert all(_is_open(fd) for fd in taken)
        assert await reader.read(100) == b""  # the output's end, after its close
        for fd in {*taken, sentinel, out_w, in_r}:  # the sentinel may hold one of the numbers
            os.close(fd)

    run(main(), loop)


async def test_a_program_that_ends_by_itself_leaves_no_descriptor_open() -> None:
    # As a login's files are written: input ended, output read to its end, never killed.
    config = Config()
    identity = Identity(username="u", conn_id="fd-test", remote_addr="127.0.0.1", config=config)
    environment = await LocalBackend(config, "test").open(identity)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            process = await environment.start(ProcessSpec(command="cat; echo done >&2"))
            await process.write(b"content")
            await process.write_eof()
            assert await process.read(Stream.STDOUT, 100) == b"content"
            assert await process.read(Stream.STDOUT, 100) == b""
            assert await process.read(Stream.STDERR, 100) == b"done\n"
            assert await process.read(Stream.STDERR, 100) == b""
            assert (await process.wait()).code == 0
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        await environment.close()
