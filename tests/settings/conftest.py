"""Fixtures of the settings tests: real mesh processes, and a server that trickles its answer."""

from __future__ import annotations

import asyncio

import pytest

from tests.mesh.conftest import mesh_factory  # noqa: F401  (real gateway and worker processes)


@pytest.fixture
async def trickle_server():
    """An HTTP server on 127.0.0.1 that sends its 8-byte body one byte every 2 seconds."""
    handlers: list[asyncio.Task] = []

    async def handle(reader, writer):
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 8\r\n\r\n")
        try:
            for _ in range(8):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(2)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await server.wait_closed()
