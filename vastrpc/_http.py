"""A small HTTP/1.1 server on the running asyncio event loop: GET and HEAD, one request per connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

__all__ = ["HttpServer", "Request", "Response", "dial_host", "start_http_server"]

log = logging.getLogger(__name__)

# A client that has not sent its whole request within this long is dropped: it would hold a connection open.
_READ_TIMEOUT = 10.0
_MAX_HEADERS = 100
_MAX_LINE = 8 << 10
_MAX_BODY = 64 << 10
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    """A parsed request: ``path`` without its query, ``query`` decoded, header names lower-case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Response:
    """An answer: a whole ``body``, or a ``stream`` of pieces sent chunked until it ends or the client goes.

    ``headers`` are extra ``(name, value)`` pairs beside Content-Type and the length or chunking.
    """

    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    stream: AsyncIterator[bytes] | None = field(default=None, compare=False)


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """A running server; ``address`` is the ``host:port`` clients dial."""

    def __init__(self, server: asyncio.Server, address: str, tasks: set[asyncio.Task[None]]) -> None:
        self._server = server
        self._tasks = tasks
        self.address = address

    @property
    def open_connections(self) -> int:
        """Connections being answered now (a followed stream counts until it ends)."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop listening and end open connections (streams included)."""
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self._server.wait_closed()


async def start_http_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    advertise_host: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = 64,
) -> HttpServer:
    """Answer GET and HEAD requests on ``host:port`` (0 picks a free port) with ``handler``.

    Other methods get 405 and malformed requests 400 without reaching the handler; beyond
    ``max_connections`` open at once, 503.

    Args:
        handler: Turns a request into a response.
        host: The interface to listen on.
        port: The port; 0 picks a free one.
        advertise_host: The host in ``address`` (default ``host``; loopback for a wildcard).
        ssl_context: Serve HTTPS with it; plain HTTP when None.
        max_connections: How many connections may be open at once.

    Raises:
        OSError: The port is taken or the host is not this machine's.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            if len(tasks) > max_connections:
                # Read first: closing with the request unread would reset the connection, not answer it.
                async with asyncio.timeout(_READ_TIMEOUT):
                    await _read_request(reader)
                await _write(writer, "GET", Response(503, body=b"too many connections; try again\n"))
            else:
                await _answer(reader, writer, handler)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away or spoke something else: nothing to answer
        except asyncio.CancelledError:
            pass  # the server is closing
        except Exception:
            log.exception("HTTP request failed")
        finally:
            tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host.strip("[]") or None, port, ssl=ssl_context, limit=_MAX_LINE)
    bound = server.sockets[0].getsockname()[1]
    shown = advertise_host or dial_host(host)
    return HttpServer(server, f"{shown}:{bound}", tasks)


def dial_host(host: str) -> str:
    """The host a client on this machine dials for a server listening on ``host``."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request, or None when it is not one this server reads."""
    request_line = (await reader.readline()).decode("latin-1")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = (await reader.readline()).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    # A body is read before the answer: closing with it unread would reset the connection.
    length = headers.get("content-length") or "0"
    if not length.isdigit():
        return None
    if 0 < int(length) <= _MAX_BODY:
        await reader.readexactly(int(length))
    target = urlsplit(parts[1])
    return Request(parts[0], target.path, dict(parse_qsl(target.query)), headers)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    # One deadline for the whole request: a client trickling header lines cannot hold a connection.
    async with asyncio.timeout(_READ_TIMEOUT):
        request = await _read_request(reader)
    if request is None:
        await _write(writer, "GET", Response(400, body=b"not an HTTP/1.1 request\n"))
        return
    if request.method not in ("GET", "HEAD"):
        await _write(writer, "GET", Response(405, body=b"only GET\n", headers=(("Allow", "GET, HEAD"),)))
        return
    response = await handler(request)
    await _write(writer, request.method, response)
    if response.stream is not None and request.method == "GET":
        await _send_stream(reader, writer, response.stream)
    elif response.stream is not None:
        await _close_stream(response.stream)


async def _write(writer: asyncio.StreamWriter, method: str, response: Response) -> None:
    reason = _REASONS.get(response.status, "")
    head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}"]
    if response.stream is not None:
        head.append("Transfer-Encoding: chunked")
    else:
        head.append(f"Content-Length: {len(response.body)}")
    head += [f"{name}: {value}" for name, value in response.headers]
    head.append("Connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    if method != "HEAD" and response.stream is None:
        writer.write(response.body)
    await writer.drain()


async def _send_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: AsyncIterator[bytes]
) -> None:
    """Send ``stream`` chunked until it ends, or until the client closes its side (a quiet stream would not notice)."""

    async def pump() -> None:
        async for piece in stream:
            if piece:
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    sending = asyncio.create_task(pump())
    # The client sends nothing after its request: anything read here is its side closing.
    gone = asyncio.create_task(reader.read(1))
    try:
        await asyncio.wait({sending, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, gone):
            task.cancel()
        await asyncio.gather(sending, gone, return_exceptions=True)
        await _close_stream(stream)


async def _close_stream(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
