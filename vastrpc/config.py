"""Configuration as frozen dataclasses; environment variables are read only by the ``from_env`` entry points."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClientConfig", "ControlConfig", "default_home"]

ENV_HOME = "VASTRPC_HOME"
ENV_CONTROL_ADDRESS = "VASTRPC_CONTROL_ADDRESS"
ENV_API_KEY = "VASTRPC_API_KEY"


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """The vastrpc home folder: ``$VASTRPC_HOME``, else ``~/.vastrpc``."""
    env = os.environ if environ is None else environ
    return Path(env.get(ENV_HOME) or Path.home() / ".vastrpc").expanduser()


@dataclass(frozen=True)
class ClientConfig:
    """How the SDK reaches the control service.

    Attributes:
        control_address: ``host:port`` of a running control service; ``None`` starts or
            reuses the embedded one under ``home``.
        api_key: The control service's API key; ``None`` reads ``home/api_key`` (embedded default).
        home: The vastrpc home folder (embedded control service, caches, keys).
        connect_timeout: Seconds to wait for the control service to answer.
        ready_timeout: Seconds ``ensure_ready`` waits for workers before giving up.
        balancer: How calls choose a worker: ``"least_expected_time"`` (by benchmark score,
            observed latency and calls in flight) or ``"round_robin"``.
    """

    control_address: str | None = None
    api_key: str | None = None
    home: Path = field(default_factory=lambda: Path.home() / ".vastrpc")
    connect_timeout: float = 5.0
    ready_timeout: float = 600.0
    balancer: str = "least_expected_time"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientConfig:
        """Build from ``VASTRPC_CONTROL_ADDRESS``, ``VASTRPC_API_KEY`` and ``VASTRPC_HOME``."""
        env = os.environ if environ is None else environ
        return cls(
            control_address=env.get(ENV_CONTROL_ADDRESS) or None,
            api_key=env.get(ENV_API_KEY) or None,
            home=default_home(env),
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
        worker_stop_grace: Seconds a stopping worker gets before it is killed.
        reaper_interval: Seconds between two passes of the TTL reaper (teardown of idle
            endpoints, removal of bundles no endpoint uses).
        bundle_grace: Seconds a bundle is kept after it was stored or last registered,
            even when no endpoint uses it (an upload may be in flight before its Provision).
        autoscale_interval: Seconds between two looks of the autoscaler at every endpoint's load.
        scale_down_delay: Seconds fewer workers must have sufficed before the autoscaler stops
            some (hysteresis: a lull between bursts keeps the workers the next burst needs).
    """

    home: Path
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    enable_reflection: bool = True
    heartbeat_interval: float = 2.0
    worker_stop_grace: float = 10.0
    reaper_interval: float = 1.0
    bundle_grace: float = 60.0
    autoscale_interval: float = 1.0
    scale_down_delay: float = 10.0
