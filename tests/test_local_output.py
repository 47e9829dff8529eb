"""Program output on its way to a channel: every byte in order, reads bounded, memory bounded."""

from __future__ import annotations

import hashlib

from pairpod.backends.base import Identity, ProcessSpec, Stream
from pairpod.backends.local import LocalBackend, LocalProcess
from pairpod.backends.output import HIGH_WATER, OutputPipe
from pairpod.config import Config
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
