"""Runs the control service process: API key, store, blobs, provider, gRPC server, control.json, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from vastrpc._files import exposed_home
from vastrpc._grpc import start_server
from vastrpc._http import HttpServer, dial_host
from vastrpc._metrics import MetricsServer, start_metrics_server
from vastrpc._tls import TlsFiles, certificate_problems
from vastrpc.api.v1 import control_pb2, control_pb2_grpc
from vastrpc.config import ControlConfig
from vastrpc.control.backends import open_blobs, open_provider, open_store
from vastrpc.control.dashboard import CallRates, Dashboard, start_dashboard
from vastrpc.control.lifecycle.autoscaler import Autoscaler
from vastrpc.control.lifecycle.endpoints import Lifecycle
from vastrpc.control.lifecycle.leadership import Leadership
from vastrpc.control.lifecycle.reaper import Reaper
from vastrpc.control.metrics import ControlMetrics
from vastrpc.control.service import ControlService

__all__ = ["resolve_api_key", "serve"]

log = logging.getLogger(__name__)

SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name
SERVER_STOP_GRACE = 5.0


def resolve_api_key(config: ControlConfig) -> str:
    """The API key: ``config.api_key``, else ``home/api_key``, else a new one written there (mode 0600)."""
    if config.api_key:
        return config.api_key
    path = config.home / "api_key"
    try:
        # O_EXCL: of two services starting at once, one creates the key and the other reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.02)  # the creator has not written it yet
        raise RuntimeError(f"{path} is empty: delete it to have a new API key created") from None
    # A prefix makes the key recognisable, and keeps it from starting with "-" (argv-safe).
    key = "vk_" + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.info("created a new API key in %s", path)
    return key


def _write_json_atomically(path: Path, data: dict[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _previous_port(path: Path) -> int:
    """The port in a control.json left by a control service that is no longer running, or 0."""
    try:
        info = json.loads(path.read_text())
        pid, port = int(info["pid"]), int(str(info["address"]).rsplit(":", 1)[1])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return 0
    try:
        os.kill(pid, 0)
        return 0  # still running (or the pid was reused): not ours to take
    except ProcessLookupError:
        return port
    except PermissionError:
        return 0


def _mark_leader(path: Path, leader: bool) -> None:
    """Record in control.json, if this process wrote it, whether this service leads (tests and operators read it)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if info.get("pid") == os.getpid():
        _write_json_atomically(path, {**info, "leader": leader})


def _remove_if_ours(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


async def _serve_metrics(metrics: ControlMetrics, host: str, port: int) -> MetricsServer:
    """Serve ``/metrics`` and the workers' metrics endpoints (``/targets``, Prometheus HTTP SD) on ``host:port``."""
    try:
        server = await start_metrics_server(
            metrics.registry, host, port, advertise_host=dial_host(host), routes={"/targets": metrics.targets}
        )
    except OSError as exc:
        raise OSError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose another --metrics-port"
        ) from exc
    log.info("Prometheus metrics at http://%s/metrics", server.address)
    return server


def _describe_tls(config: ControlConfig) -> str:
    if config.tls is None:
        return "plaintext"
    return "mutual TLS" if config.tls.require_client_cert else "TLS"


def _check_worker_certificate(tls: TlsFiles) -> None:
    """Warn when local workers could not use the service's certificate: they serve and authenticate with it."""
    assert tls.cert_file is not None
    # Local workers listen on loopback: clients check that the certificate names 127.0.0.1.
    problems = certificate_problems(tls.cert_file, client=tls.require_client_cert, hosts=["127.0.0.1"])
    for problem in problems:
        log.warning("local workers serve with %s, but %s", tls.cert_file, problem)


async def serve(
    config: ControlConfig,
    *,
    ready: Callable[[str], object] | None = None,
    worker_command: Sequence[str] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the control service until SIGTERM or SIGINT (or ``stop`` is set).

    Args:
        config: Where and how to run.
        ready: Called with the service's address once it is bound and ``control.json`` is written.
        worker_command: The argv prefix that starts a worker agent (default
            ``python -m vastrpc worker``); tests pass a fake worker.
        stop: An event that stops the service when set (for embedding in tests).
    """
    home = Path(config.home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (exposed := exposed_home(home)) is not None:
        log.warning("%s", exposed)
    api_key = resolve_api_key(config)
    store = open_store(config)
    blobs = open_blobs(config)
    if config.tls is not None:
        _check_worker_certificate(config.tls)
    elif config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s in plaintext: the API key and calls cross the network unencrypted; "
            "start with --tls auto or --tls-cert/--tls-key",
            config.host,
        )
    provider = open_provider(config, worker_command=worker_command)
    for warning in provider.isolation_warnings():
        log.warning("workers are not isolated: %s", warning)
    lifecycle = Lifecycle(
        store,
        blobs,
        provider,
        stop_grace=config.worker_stop_grace,
        heartbeat_interval=config.heartbeat_interval,
    )
    lifecycle.recover()
    reaper = Reaper(store, blobs, lifecycle, interval=config.reaper_interval, bundle_grace=config.bundle_grace)
    autoscaler = Autoscaler(
        store, lifecycle, interval=config.autoscale_interval, scale_down_delay=config.scale_down_delay
    )
    # A registry of this service's own: never prometheus_client's process-wide default. The
    # dashboard's charts need it too: with it, workers report their calls in their heartbeats.
    wanted = config.metrics_port is not None or config.dashboard_port is not None
    metrics = ControlMetrics(store) if wanted else None
    service = ControlService(lifecycle, api_key, reaper, autoscaler, metrics, config.watch_keepalive)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if metrics is not None:
        interceptors.append(metrics.interceptor())

    def register(server: object) -> list[str]:
        control_pb2_grpc.add_ControlServiceServicer_to_server(service, server)
        return [SERVICE_NAME]

    def bind(port: int) -> str:
        return f"[{config.host}]:{port}" if ":" in config.host else f"{config.host}:{port}"

    # After a crash, take the port the previous process had (its control.json is still
    # there): workers that outlived it reconnect to the same address and re-register.
    previous = _previous_port(home / "control.json") if config.port == 0 else 0
    listen = functools.partial(
        start_server,
        register=register,
        authorize=service.authorize,
        enable_reflection=config.enable_reflection,
        tls=config.tls,
        interceptors=interceptors,
    )
    try:
        server, port, health = await listen(bind(previous or config.port))
    except OSError:
        if not previous:
            raise
        log.info("the previous port %d is taken; listening on another", previous)
        server, port, health = await listen(bind(config.port))
    address = f"{dial_host(config.host)}:{port}"
    # Workers report here, and to the peers (in order) should this service go away.
    lifecycle.control_address = ",".join([address, *config.peers])
    info_path = home / "control.json"
    # What local clients trust (paths only; never a key): the CA of a generated certificate, or
    # the one given with --tls-ca (None: a CA the system trusts signed the certificate).
    tls_info: dict[str, object] = {"tls": False}
    if config.tls is not None:
        ca = config.tls.ca_file
        tls_info = {"tls": True, "tls_ca": str(ca) if ca else None, "tls_client_cert": config.tls.require_client_cert}
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Started once the server is bound; it gives clients of an earlier run the whole TTL to reconnect.
    # Of the services sharing a store only the leader runs them (on SQLite this one, always);
    # another takes over when it dies. Changes other services make wake this one's watchers.
    leadership = Leadership(store.leader_lock(), on_change=lambda leader: _mark_leader(info_path, leader))
    leader_task = asyncio.create_task(
        leadership.run(lambda: asyncio.gather(reaper.run(), autoscaler.run())), name="vastrpc-leadership"
    )
    changes_task = asyncio.create_task(store.follow_changes(lifecycle.changed), name="vastrpc-store-changes")
    metrics_server: MetricsServer | None = None
    dashboard_server: HttpServer | None = None
    sampler: asyncio.Task[None] | None = None
    try:
        # Written only now that the port is bound: whoever reads it can connect at once.
        info: dict[str, object] = {"address": address, "pid": os.getpid(), "started_at": time.time(), **tls_info}
        if metrics is not None and config.metrics_port is not None:
            metrics_server = await _serve_metrics(metrics, config.host, config.metrics_port)
            info["metrics_address"] = metrics_server.address
        if metrics is not None and config.dashboard_port is not None:
            # Samples a little slower than heartbeats arrive: each holds about as many of them.
            rates = CallRates(metrics.calls.by_endpoint, interval=max(1.0, 2 * config.heartbeat_interval))
            sampler = asyncio.create_task(rates.run(), name="vastrpc-dashboard-rates")
            dashboard = Dashboard(
                store, api_key, rates, lifecycle.provider.log_path, stopping=lambda: lifecycle.shutting_down
            )
            dashboard_server, info["dashboard_url"] = await start_dashboard(
                dashboard, config.host, config.dashboard_port, config.tls
            )
            log.info("dashboard at %s (the API key required)", info["dashboard_url"])
        info["leader"] = leadership.is_leader
        _write_json_atomically(info_path, info)
        bound = f"{config.host or '0.0.0.0'}:{address.rsplit(':', 1)[1]}"
        # Under a wildcard host the service listens on every interface; the address written to
        # control.json is only the one local clients dial.
        where = bound if bound == address else f"{bound} (local clients dial {address})"
        log.info("control service listening on %s (%s, home %s)", where, _describe_tls(config), home)
        if ready is not None:
            ready(address)
        provider.prestart()  # a spare agent, so that even the first deployment finds one
        await stop.wait()
        log.info("stopping: workers first (grace %gs), then the server", config.worker_stop_grace)
    finally:
        # No teardown or scaling may start while the service stops its workers.
        leader_task.cancel()
        changes_task.cancel()
        await asyncio.gather(leader_task, changes_task, return_exceptions=True)
        await health.enter_graceful_shutdown()
        try:
            await lifecycle.shutdown()
        finally:
            await server.stop(SERVER_STOP_GRACE)
            if metrics_server is not None:
                await metrics_server.close()
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            if dashboard_server is not None:
                await dashboard_server.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            _remove_if_ours(info_path)
            store.close()
            log.info("control service stopped")
