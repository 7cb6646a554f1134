"""Serves a Prometheus CollectorRegistry over HTTP from the running asyncio event loop."""

from __future__ import annotations

import gzip
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from vastrpc._http import HttpServer, Request, Response, start_http_server

__all__ = ["DURATION_BUCKETS", "MetricsServer", "start_metrics_server"]

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

# GET path -> (content type, body); for what a server serves besides the metrics.
ExtraRoute = Callable[[], tuple[str, bytes]]
# The server start_metrics_server returns (stopped with ``close()``; ``address`` is what scrapers dial).
MetricsServer = HttpServer


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

    async def answer(request: Request) -> Response:
        if request.path == "/metrics":
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
            body = encoder(registry)
            if gzip_accepted(request.headers.get("accept-encoding", "")):
                return Response(200, content_type, gzip.compress(body), (("Content-Encoding", "gzip"),))
            return Response(200, content_type, body)
        if request.path in extra:
            content_type, body = extra[request.path]()
            return Response(200, content_type, body)
        return Response(404, body=f"no {request.path} here: metrics are at /metrics\n".encode())

    return await start_http_server(answer, host, port, advertise_host=advertise_host)
