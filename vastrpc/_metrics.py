"""Serves a Prometheus CollectorRegistry over HTTP from the running asyncio event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

__all__ = ["DURATION_BUCKETS", "MetricsServer", "start_metrics_server"]

log = logging.getLogger(__name__)

# Upper bounds (seconds) of every call-duration histogram, workers' and control service's alike,
# so that the control service adds the workers' buckets one to one. Warm calls take well under
# a millisecond; model calls take seconds to minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

# A scraper that sends nothing within this long is dropped: it would hold a connection open.
_READ_TIMEOUT = 10.0
_MAX_HEADERS = 100
_MAX_BODY = 64 << 10

# GET path -> (content type, body); for what a server serves besides the metrics.
ExtraRoute = Callable[[], tuple[str, bytes]]


class MetricsServer:
    """A running metrics server; ``address`` is the ``host:port`` scrapers dial."""

    def __init__(self, server: asyncio.Server, address: str) -> None:
        self._server = server
        self.address = address

    async def close(self) -> None:
        """Stop listening and close open connections."""
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)


async def start_metrics_server(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    advertise_host: str | None = None,
    routes: dict[str, ExtraRoute] | None = None,
) -> MetricsServer:
    """Serve ``registry`` at ``GET /metrics`` on ``host:port`` (0 picks a free port).

    Collection runs on this event loop, between its other work, so collectors may read
    state that only the loop touches (the control service's store) without locks.

    Args:
        registry: What to expose.
        host: The interface to listen on.
        port: The port; 0 picks a free one.
        advertise_host: The host in ``address`` (default ``host``; loopback for a wildcard).
        routes: More GET paths, each a function returning ``(content type, body)``.

    Raises:
        OSError: The port is taken or the host is not this machine's.
    """
    extra = dict(routes or {})

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _answer(reader, writer, registry, extra)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
            pass  # a scraper that went away or spoke something else: nothing to answer
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host.strip("[]") or None, port)
    bound = server.sockets[0].getsockname()[1]
    shown = advertise_host or _dial_host(host)
    return MetricsServer(server, f"{shown}:{bound}")


def _dial_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    registry: CollectorRegistry,
    routes: dict[str, ExtraRoute],
) -> None:
    request_line = (await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)).decode("latin-1")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = (await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    parts = request_line.split()
    if len(parts) != 3:
        return
    # A body is read before the answer: closing with it unread would reset the connection.
    length = int(headers.get("content-length") or 0)
    if 0 < length <= _MAX_BODY:
        await asyncio.wait_for(reader.readexactly(length), _READ_TIMEOUT)
    method, target = parts[0], urlsplit(parts[1]).path
    status, content_type, body = "200 OK", "text/plain; charset=utf-8", b""
    extra: list[str] = []
    if method not in ("GET", "HEAD"):
        status, body = "405 Method Not Allowed", b"only GET\n"
        extra.append("Allow: GET, HEAD")
    elif target == "/metrics":
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(registry)
        if gzip_accepted(headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            extra.append("Content-Encoding: gzip")
    elif target in routes:
        content_type, body = routes[target]()
    else:
        status, body = "404 Not Found", f"no {target} here: metrics are at /metrics\n".encode()
    head = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}", *extra]
    head.append("Connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    if method != "HEAD":
        writer.write(body)
    await writer.drain()
