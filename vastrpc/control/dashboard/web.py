"""The dashboard's HTTP side: the page and its files, the JSON API behind the API key, a worker's log followed live."""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from vastrpc._errors import VastrpcError
from vastrpc._grpc import tokens_equal
from vastrpc._http import HttpServer, Request, Response, start_http_server
from vastrpc._tls import TlsFiles
from vastrpc.control.dashboard.stats import CallRates
from vastrpc.control.dashboard.views import deployments_json
from vastrpc.control.logtail import LogFollower
from vastrpc.control.stores.base import Store

__all__ = ["DEFAULT_TAIL_LINES", "MAX_TAIL_LINES", "Dashboard", "server_context", "start_dashboard"]

log = logging.getLogger(__name__)

# A log view opens with this many of the worker's last lines, and never more than the maximum.
DEFAULT_TAIL_LINES = 200
MAX_TAIL_LINES = 10_000
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}
# Every answer: nothing loads from elsewhere, no framing (clickjacking), no sniffing, no referrer.
# Inline styles: uPlot positions its cursor and legend with style attributes.
_SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


def _static_files() -> dict[str, tuple[str, bytes]]:
    """The page's files by URL path, read once from the package (``static/``)."""
    root = resources.files(__package__ or "vastrpc.control.dashboard") / "static"
    files: dict[str, tuple[str, bytes]] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
                continue
            kind = _TYPES.get(Path(entry.name).suffix)
            if kind is not None:
                files[f"/static/{prefix}{entry.name}"] = (f"{kind}; charset=utf-8", entry.read_bytes())

    walk(root, "")
    files["/"] = files["/static/index.html"]
    return files


class Dashboard:
    """Answers the dashboard's requests.

    The page and its scripts are public (they hold no data); every ``/api/`` path requires
    the API key as ``Authorization: Bearer KEY``, which the page sends on each request. No
    cookie is involved, so another site cannot make a browser send the key (no CSRF), and
    nothing changes state: every path is a GET.

    Args:
        store: The control service's state store.
        api_key: The key the API requires.
        rates: The call samples ``/api/stats`` answers with.
        log_path: Where the provider writes a worker's log when its row names none.
        stopping: Whether the control service is going down (log streams end).
    """

    def __init__(
        self,
        store: Store,
        api_key: str,
        rates: CallRates,
        log_path: Callable[[str], Path],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        if not api_key:
            raise ValueError("the dashboard needs a non-empty API key")
        self._store = store
        self._api_key = api_key
        self._rates = rates
        self._log_path = log_path
        self._stopping = stopping
        self._files = _static_files()

    async def handle(self, request: Request) -> Response:
        """The answer to one GET or HEAD request."""
        response = await self._route(request)
        return Response(
            response.status,
            response.content_type,
            response.body,
            (*response.headers, *_SECURITY_HEADERS),
            response.stream,
        )

    async def _route(self, request: Request) -> Response:
        if request.path in self._files:
            content_type, body = self._files[request.path]
            return Response(200, content_type, body, (("Cache-Control", "no-cache"),))
        if not request.path.startswith("/api/"):
            return _error(404, f"no {request.path} here: the dashboard is at /")
        if not self._authorized(request):
            return _error(
                401,
                "the API key is required: send it as 'Authorization: Bearer KEY' (the page asks for it)",
                (("WWW-Authenticate", 'Bearer realm="vastrpc"'),),
            )
        if request.path == "/api/deployments":
            return _json(deployments_json(self._store))
        if request.path == "/api/stats":
            return _json(self._rates.to_json())
        if request.path == "/api/logs":
            return self._logs(request)
        return _error(404, f"no {request.path} here: the API has /api/deployments, /api/stats and /api/logs")

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and tokens_equal(token.strip(), self._api_key)

    def _logs(self, request: Request) -> Response:
        """``/api/logs?worker=ID[&tail=N]``: the log's last lines, then new ones as they come (NDJSON, chunked)."""
        worker_id = request.query.get("worker", "")
        if not worker_id:
            return _error(400, "name the worker: /api/logs?worker=ID")
        tail_text = request.query.get("tail", str(DEFAULT_TAIL_LINES))
        if not tail_text.isdigit() or int(tail_text) > MAX_TAIL_LINES:
            return _error(400, f"tail must be a whole number of lines from 0 to {MAX_TAIL_LINES}, not {tail_text!r}")
        try:
            follower = LogFollower(self._store, self._log_path, worker_id=worker_id)
        except VastrpcError as exc:
            return _error(404, str(exc))

        async def lines() -> AsyncIterator[bytes]:
            # A first line at once: the page knows the stream is open before the worker writes.
            yield _line({"worker": worker_id, "text": ""})
            async for worker, text in follower.stream(int(tail_text), True, self._stopping):
                yield _line({"worker": worker, "text": text.decode("utf-8", "replace")})
            yield _line({"worker": worker_id, "end": True})

        headers = (("Cache-Control", "no-store"), ("X-Accel-Buffering", "no"))
        return Response(200, "application/x-ndjson; charset=utf-8", headers=headers, stream=lines())


def _line(item: dict[str, object]) -> bytes:
    return json.dumps(item).encode() + b"\n"


def _json(data: object) -> Response:
    return Response(200, "application/json", json.dumps(data).encode(), (("Cache-Control", "no-store"),))


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps({"error": message}).encode()
    return Response(status, "application/json", body, (("Cache-Control", "no-store"), *headers))


def server_context(host: str, tls: TlsFiles | None) -> ssl.SSLContext | None:
    """How the dashboard serves on ``host``: None (plain HTTP) on loopback, else TLS with the service's certificate.

    Off loopback without a certificate it is plain HTTP too, with a warning: the page sends
    the API key with every request.
    """
    if _loopback(host):
        return None
    if tls is not None and tls.cert_file is not None and tls.key_file is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        return context
    log.warning(
        "the dashboard listens on %s in plain HTTP: the API key crosses the network unencrypted; "
        "give the service a certificate (--tls auto or --tls-cert/--tls-key), or keep --host on loopback",
        host,
    )
    return None


def _loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name, or a wildcard's "": other machines may reach it


async def start_dashboard(dashboard: Dashboard, host: str, port: int, tls: TlsFiles | None) -> tuple[HttpServer, str]:
    """Serve ``dashboard`` on ``host:port`` (0 picks a free port); HTTPS with ``tls`` off loopback.

    On loopback it serves plain HTTP: nothing crosses the network, and a browser would not
    trust the local CA of ``--tls auto``. Elsewhere it serves HTTPS with the service's own
    certificate when it has one, and warns when it has none (the key would cross in plaintext).

    Returns:
        The running server, and the URL a browser on this machine opens.

    Raises:
        OSError: The port is taken or the host is not this machine's.
    """
    context = server_context(host, tls)
    try:
        server = await start_http_server(dashboard.handle, host, port, ssl_context=context)
    except OSError as exc:
        raise OSError(
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; choose another --dashboard-port"
        ) from exc
    return server, f"{'https' if context else 'http'}://{server.address}/"
