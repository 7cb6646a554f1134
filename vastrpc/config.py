"""Configuration as frozen dataclasses; environment variables are read only by the ``from_env`` entry points."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vastrpc._errors import DefinitionError
from vastrpc._tls import TlsFiles

__all__ = ["ClientConfig", "ControlConfig", "control_addresses", "default_home", "tls_from_env"]

ENV_HOME = "VASTRPC_HOME"
ENV_CONTROL_ADDRESS = "VASTRPC_CONTROL_ADDRESS"
ENV_API_KEY = "VASTRPC_API_KEY"
ENV_PROGRESS = "VASTRPC_PROGRESS"
# The dashboard's port for `vastrpc control serve` ("off": none); the embedded service defaults to 0 (any).
ENV_DASHBOARD_PORT = "VASTRPC_DASHBOARD_PORT"
_PROGRESS_MODES = ("auto", "live", "plain", "off")
# TLS files of a client (the CA to trust; a certificate and key for mutual TLS). The local
# provider sets them for the workers it starts, with VASTRPC_TLS_REQUIRE_CLIENT_CERT.
ENV_TLS_CA = "VASTRPC_TLS_CA"
ENV_TLS_CERT = "VASTRPC_TLS_CERT"
ENV_TLS_KEY = "VASTRPC_TLS_KEY"
ENV_TLS_REQUIRE_CLIENT_CERT = "VASTRPC_TLS_REQUIRE_CLIENT_CERT"
ENV_TLS = (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_REQUIRE_CLIENT_CERT)


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """The vastrpc home folder: ``$VASTRPC_HOME``, else ``~/.vastrpc``."""
    env = os.environ if environ is None else environ
    return Path(env.get(ENV_HOME) or Path.home() / ".vastrpc").expanduser()


def tls_from_env(environ: Mapping[str, str] | None = None) -> TlsFiles | None:
    """TLS files from ``VASTRPC_TLS_CA``, ``VASTRPC_TLS_CERT`` and ``VASTRPC_TLS_KEY``; None when none is set.

    ``VASTRPC_TLS_REQUIRE_CLIENT_CERT=1`` (set by the control service for its workers) makes
    a worker's own server require client certificates too.

    Raises:
        DefinitionError: Only one of the certificate and its key is set.
    """
    env = os.environ if environ is None else environ
    ca, cert, key = (env.get(name) or None for name in (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY))
    if (cert is None) != (key is None):
        raise DefinitionError(
            f"{ENV_TLS_CERT} and {ENV_TLS_KEY} go together (a client certificate and its key, for mutual TLS): "
            "set both or neither"
        )
    if ca is None and cert is None:
        return None
    return TlsFiles(
        ca_file=Path(ca).expanduser() if ca else None,
        cert_file=Path(cert).expanduser() if cert else None,
        key_file=Path(key).expanduser() if key else None,
        require_client_cert=env.get(ENV_TLS_REQUIRE_CLIENT_CERT, "") == "1",
    )


def control_addresses(value: str | Sequence[str] | None, *, source: str = "control_address") -> tuple[str, ...]:
    """Control service addresses from ``"a:1,b:2"``, ``["a:1", "b:2"]`` or ``"a:1"``, in order, each once.

    Several control services on one PostgreSQL store serve the same deployments: a client
    uses the first that answers and turns to the next when it stops answering.

    Args:
        value: One ``host:port``, a comma-separated list of them, or a sequence; None or
            empty is none (the embedded control service).
        source: Where the value came from, for the message (``VASTRPC_CONTROL_ADDRESS``, ``--control``).

    Raises:
        DefinitionError: An entry is not ``host:port`` with a port from 1 to 65535.
    """
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else [p for item in value for p in str(item).split(",")]
    found: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DefinitionError(
                f"{source}: {part!r} is not host:port of a control service; write e.g. 127.0.0.1:50051, "
                "or several separated by commas (10.0.0.10:50051,10.0.0.11:50051)"
            )
        if part not in found:
            found.append(part)
    return tuple(found)


@dataclass(frozen=True)
class ClientConfig:
    """How the SDK reaches the control service.

    Attributes:
        control_address: ``host:port`` of a running control service, or several (a
            comma-separated string or a sequence) of services sharing one PostgreSQL store:
            the client uses the first that answers and turns to the next when it stops
            answering, meanwhile calling the workers it knows. ``None`` starts or reuses the
            embedded one under ``home``.
        api_key: The control service's API key; ``None`` reads ``home/api_key`` (embedded default).
        home: The vastrpc home folder (embedded control service, caches, keys).
        connect_timeout: Seconds to wait for the control service to answer.
        ready_timeout: Seconds ``ensure_ready`` waits for workers before giving up.
        balancer: How calls choose a worker: ``"least_expected_time"`` (by benchmark score,
            observed latency and calls in flight) or ``"round_robin"``.
        tls: TLS to the control service and its workers: ``ca_file`` is the CA that signed
            their certificates (None: the system's roots), ``cert_file`` and ``key_file`` this
            client's certificate for mutual TLS. ``None`` is plaintext, except for the embedded
            control service, which says what to trust itself (``home/tls/ca.pem``).
        progress: What a deploy shows on stderr: ``"auto"`` (live progress when stderr is a
            terminal, otherwise a line per step), ``"live"``, ``"plain"``, or ``"off"``.
    """

    control_address: str | Sequence[str] | None = None
    api_key: str | None = None
    home: Path = field(default_factory=lambda: Path.home() / ".vastrpc")
    connect_timeout: float = 5.0
    ready_timeout: float = 600.0
    balancer: str = "least_expected_time"
    tls: TlsFiles | None = None
    progress: str = "auto"

    def __post_init__(self) -> None:
        if self.progress not in _PROGRESS_MODES:
            raise DefinitionError(
                f"progress={self.progress!r} (or {ENV_PROGRESS}): use one of {', '.join(_PROGRESS_MODES)}"
            )
        addresses = control_addresses(self.control_address)  # a malformed address fails here, saying which
        if self.control_address is not None and not isinstance(self.control_address, str):
            # Kept as a tuple: the configuration stays immutable (and hashable) whatever was passed.
            object.__setattr__(self, "control_address", addresses)

    @property
    def control_addresses(self) -> tuple[str, ...]:
        """The configured control service addresses, in order of preference; empty for the embedded one."""
        return control_addresses(self.control_address)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientConfig:
        """Build from ``VASTRPC_CONTROL_ADDRESS`` (one ``host:port`` or several, comma-separated),
        ``VASTRPC_API_KEY``, ``VASTRPC_HOME`` and ``VASTRPC_TLS_*``."""
        env = os.environ if environ is None else environ
        addresses = control_addresses(env.get(ENV_CONTROL_ADDRESS), source=ENV_CONTROL_ADDRESS)
        return cls(
            control_address=",".join(addresses) or None,
            api_key=env.get(ENV_API_KEY) or None,
            home=default_home(env),
            tls=tls_from_env(env),
            progress=env.get(ENV_PROGRESS) or "auto",
        )


@dataclass(frozen=True)
class ControlConfig:
    """How a control service process runs.

    Attributes:
        home: Folder for its state (``state.db``), bundles, worker logs and ``control.json``.
        host: Interface to listen on; loopback unless asked otherwise.
        port: Port to listen on; 0 picks a free one.
        api_key: The key clients must present; ``None`` reads or creates ``home/api_key``.
        enable_reflection: Serve gRPC server reflection.
        heartbeat_interval: Seconds between worker heartbeats.
        watch_keepalive: Seconds a quiet endpoint watch goes without a message before the
            service sends a keepalive (at most 10: clients watch again after 30 s of silence).
        worker_stop_grace: Seconds a stopping worker gets before it is killed.
        reaper_interval: Seconds between two passes of the TTL reaper (teardown of idle
            endpoints, removal of bundles no endpoint uses).
        bundle_grace: Seconds a bundle is kept after it was stored or last registered,
            even when no endpoint uses it (an upload may be in flight before its Provision).
        autoscale_interval: Seconds between two looks of the autoscaler at every endpoint's load.
        scale_down_delay: Seconds fewer workers must have sufficed before the autoscaler stops
            some (hysteresis: a lull between bursts keeps the workers the next burst needs).
        tls: Serve TLS with these files (``cert_file``, ``key_file``; ``ca_file`` and
            ``require_client_cert`` for mutual TLS); plaintext when None. Local workers serve
            with the same certificate, present it under mutual TLS, and trust ``ca_file``.
        store_url: Where the control state lives: ``None`` is SQLite in ``home/state.db``;
            ``postgresql://user@host/db`` is a PostgreSQL database that several control
            services may share.
        blob_url: Where bundles are kept: ``None`` is ``home/bundles``; ``s3://bucket/prefix``
            is an S3 (or S3-compatible) bucket.
        s3_endpoint_url: The endpoint of an S3-compatible store (None: AWS S3 itself).
        provider: How workers are started: ``"local"`` (processes on this machine),
            ``"ray"`` (actors on the Ray cluster at ``ray_address``), ``"podman"`` or
            ``"docker"`` (agents on this machine, each serving process in a container of the
            deployment's image).
        ray_address: The Ray cluster's address (``host:port`` of its GCS), for ``provider="ray"``.
        metrics_port: Serve Prometheus metrics over HTTP on this port (0 picks a free one);
            None serves none.
        dashboard_port: Serve the live web page (deployments, workers, call charts, logs;
            the API key required) on this port, on the ``host`` interface (0 picks a free
            one); None serves none. Plain HTTP on loopback, HTTPS with ``tls`` elsewhere.
        peers: ``host:port`` of the other control services on the same (PostgreSQL) store:
            workers this one starts turn to them, in order, when it stops answering, and keep
            serving without a restart.
        inventory_file: A JSON file declaring what this machine offers (CPUs, RAM, disk,
            GPUs), against which the local provider evaluates requirements instead of probing
            the machine; None probes it.
        container_runtime: The OCI runtime ``--provider podman`` runs containers with;
            None: ``runc`` where installed, else podman's default.
        worker_user: The unprivileged user the local provider runs workers as when this
            service runs as root (created on first use); None runs them as the service's own
            user, which ``control serve`` warns about (a deployment's code could then read the
            service's home). See docs/security.md.
        spare_agent: The local provider keeps one worker agent pre-started (about 100 MB), so
            that a new worker without pip packages starts in a tenth of a second; and each
            worker agent (local and Ray providers) starts its next revision's serving process
            once one serves (about 50 MB, ``vastrpc.serve.standby``), so that a code update
            of the same environment serves in it. False starts every worker and every serving
            process from scratch.
    """

    home: Path
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    enable_reflection: bool = True
    heartbeat_interval: float = 2.0
    watch_keepalive: float = 10.0
    worker_stop_grace: float = 10.0
    reaper_interval: float = 1.0
    bundle_grace: float = 60.0
    autoscale_interval: float = 1.0
    scale_down_delay: float = 10.0
    tls: TlsFiles | None = None
    store_url: str | None = None
    blob_url: str | None = None
    s3_endpoint_url: str | None = None
    provider: str = "local"
    ray_address: str | None = None
    metrics_port: int | None = None
    dashboard_port: int | None = None
    peers: tuple[str, ...] = ()
    inventory_file: Path | None = None
    container_runtime: str | None = None
    worker_user: str | None = "vastrpc-worker"
    spare_agent: bool = True
