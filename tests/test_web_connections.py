"""The web listener's connection caps, on a real listener: per source and for everyone."""

from __future__ import annotations

import asyncio

from pairpod.web.connections import ConnectionLimit


class _Greeting(asyncio.Protocol):
    """Says hello on a connection the limit let through (a refused one gets EOF at once)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"hi")


async def _admitted(port: int, source: str) -> tuple[bool, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return await reader.read(2) == b"hi", writer


async def test_all_sources_together_hold_at_most_the_total() -> None:
    # Many addresses together must not take the process's descriptors either.
    limit = ConnectionLimit(
        lambda address: address == "127.0.0.9", header_timeout=300, send_timeout=300, per_source=32, total=4
    )
    server = await asyncio.get_running_loop().create_server(limit.wrap(_Greeting), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writers: list[asyncio.StreamWriter] = []
    try:
        admitted = []
        for source in [f"127.0.0.{n}" for n in range(2, 8)]:  # six addresses, one connection each
            ok, writer = await _admitted(port, source)
            admitted.append(ok)
            writers.append(writer)
        assert admitted == [True] * 4 + [False] * 2
        # One leaving makes room for the next, also for a source not capped by itself.
        writers[0].close()
        async with asyncio.timeout(20):
            while True:
                ok, writer = await _admitted(port, "127.0.0.9")
                writers.append(writer)
                if ok:
                    break
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
