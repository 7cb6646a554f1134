"""The small HTTP server: what it refuses before the handler, streams, HEAD, and its connection limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vastrpc._http import Request, Response, start_http_server

pytestmark = pytest.mark.timeout(30)


async def exchange(address: str, raw: bytes) -> bytes:
    """Send ``raw`` and read the whole answer (the server closes after one)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_bad_requests_and_other_methods_never_reach_the_handler() -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return Response(body=f"{request.path} {sorted(request.query.items())}".encode())

    server = await start_http_server(handler, "127.0.0.1", 0)
    try:
        ok = await exchange(server.address, b"GET /a?x=1&y=two HTTP/1.1\r\nHost: h\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"/a [('x', '1'), ('y', 'two')]")
        assert (await exchange(server.address, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        bad_length = b"GET / HTTP/1.1\r\nContent-Length: lots\r\n\r\n"
        assert (await exchange(server.address, bad_length)).startswith(b"HTTP/1.1 400 ")
        post = await exchange(server.address, b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post
        assert [r.path for r in seen] == ["/a"]
    finally:
        await server.close()


async def test_a_stream_is_chunked_for_get_and_not_sent_for_head_and_the_limit_answers_503() -> None:
    started: list[str] = []
    closed: list[str] = []

    async def pieces(method: str) -> AsyncIterator[bytes]:
        started.append(method)
        try:
            yield b"one\n"
            yield b""  # nothing to send yet: no empty chunk, which would end the stream
            yield b"two\n"
        finally:
            closed.append(method)

    release = asyncio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/hold":
            await release.wait()
        return Response(stream=pieces(request.method))

    server = await start_http_server(handler, "127.0.0.1", 0, max_connections=1)
    try:
        got = await exchange(server.address, b"GET / HTTP/1.1\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in got and got.endswith(b"\r\n\r\n4\r\none\n\r\n4\r\ntwo\n\r\n0\r\n\r\n")
        head = await exchange(server.address, b"HEAD / HTTP/1.1\r\n\r\n")
        assert head.endswith(b"Connection: close\r\n\r\n")
        assert started == closed == ["GET"]  # HEAD never starts the stream

        host, port = server.address.rsplit(":", 1)
        _, holder = await asyncio.open_connection(host, int(port))
        holder.write(b"GET /hold HTTP/1.1\r\n\r\n")
        await holder.drain()
        for _ in range(100):
            if server.open_connections == 1:
                break
            await asyncio.sleep(0.02)
        assert (await exchange(server.address, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
        release.set()
        holder.close()
    finally:
        await server.close()
    assert server.open_connections == 0
