"""The control service's rules about specs, states and workers: validation, names, log tails, token hashing."""

from __future__ import annotations

import hashlib
import re
import signal
from pathlib import Path, PurePosixPath

from vastrpc._errors import DefinitionError
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.control.bundles.base import check_digest
from vastrpc.control.providers.requirements import spec_queries
from vastrpc.image import absolute_copy_bundle_path

WORKER_STATE_NAMES: dict[int, str] = {
    common_pb2.WORKER_STATE_STARTING: "starting",
    common_pb2.WORKER_STATE_DOWNLOADING: "downloading",
    common_pb2.WORKER_STATE_PULLING: "pulling",
    common_pb2.WORKER_STATE_INSTALLING: "installing",
    common_pb2.WORKER_STATE_LOADING: "loading",
    common_pb2.WORKER_STATE_BENCHMARKING: "benchmarking",
    common_pb2.WORKER_STATE_READY: "ready",
    common_pb2.WORKER_STATE_DRAINING: "draining",
    common_pb2.WORKER_STATE_STOPPED: "stopped",
    common_pb2.WORKER_STATE_FAILED: "failed",
}
WORKER_STATE_VALUES = {name: value for value, name in WORKER_STATE_NAMES.items()}
ENDPOINT_STATE_VALUES: dict[str, int] = {
    "new": common_pb2.ENDPOINT_STATE_UNSPECIFIED,
    "deploying": common_pb2.ENDPOINT_STATE_DEPLOYING,
    "ready": common_pb2.ENDPOINT_STATE_READY,
    "failed": common_pb2.ENDPOINT_STATE_FAILED,
    "stopped": common_pb2.ENDPOINT_STATE_STOPPED,
    "waiting": common_pb2.ENDPOINT_STATE_WAITING,
}
# Endpoints whose workers the autoscaler sizes (waiting: it lost them, and places new ones).
SCALABLE_STATES = ("ready", "deploying", "waiting")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_LOG_TAIL_LINES = 40
DEFAULT_TAG = "default"


def hash_token(token: str) -> str:
    """What the store keeps of a worker token."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_log_tail(path: str | Path, *, lines: int = _LOG_TAIL_LINES, max_bytes: int = 64 << 10) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def exit_message(returncode: int) -> str:
    """A worker process's end, in words."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"worker process was killed by signal {name}"
    return f"worker process exited with code {returncode}"


def desired_workers(spec: control_pb2.DeploymentSpec, current: int = 0) -> int:
    """Workers to run when a revision needs fresh or reloaded workers (a first deploy, tiers 2 to 4).

    At least one, even with ``min_workers=0``: a new revision proves it installs, loads and
    benchmarks before it is ready (the autoscaler may scale it to zero later). At least
    ``min_workers`` and ``cold_workers``, and the autoscaler's ``current`` count, so an update
    under load keeps its capacity; never more than ``max_workers``.
    """
    a = spec.autoscaling
    return max(1, min(max(a.min_workers, a.cold_workers, current, 1), a.max_workers))


def kept_workers(spec: control_pb2.DeploymentSpec, current: int) -> int:
    """Workers to run when the workload stays (tier 0 and 1): the autoscaler's count within the spec's bounds.

    Zero for an endpoint the autoscaler scaled to zero: provisioning it again wakes nothing
    (a client's call does, through WakeEndpoint).
    """
    a = spec.autoscaling
    return max(a.min_workers, min(current, a.max_workers))


def wake_workers(spec: control_pb2.DeploymentSpec) -> int:
    """Workers WakeEndpoint starts for an endpoint at zero: ``cold_workers``, at least one, at most ``max_workers``."""
    a = spec.autoscaling
    return max(1, min(a.cold_workers, a.max_workers))


def validate_spec(spec: control_pb2.DeploymentSpec) -> None:
    """Raise DefinitionError saying what to fix when ``spec`` cannot be deployed."""
    if not spec.name:
        raise DefinitionError("the deployment has no name: give it one, e.g. Deployment(name='hello')")
    if not _NAME.fullmatch(spec.name):
        raise DefinitionError(
            f"deployment name {spec.name[:80]!r} is invalid: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    if spec.tag and not _NAME.fullmatch(spec.tag):
        raise DefinitionError(
            f"tag {spec.tag[:80]!r} is invalid: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    if not spec.module:
        raise DefinitionError("the spec names no module to import on the worker (spec.module is empty)")
    if not _MODULE.fullmatch(spec.module):
        raise DefinitionError(f"module {spec.module[:80]!r} is not a dotted Python module name")
    if not spec.functions:
        raise DefinitionError(f"deployment {spec.name!r} declares no function: decorate one with @app.remote")
    names = [f.name for f in spec.functions]
    if any(not n.isidentifier() for n in names):
        raise DefinitionError(f"function names must be Python identifiers, got {names}")
    if len(set(names)) != len(names):
        raise DefinitionError(f"function names must be unique, got {names}")
    spec_queries(spec.image)  # every requirement readable, or DefinitionError naming it
    _validate_image_settings(spec.image)
    if not any(f.has_benchmark for f in spec.functions):
        raise DefinitionError(
            f"deployment {spec.name!r}: no function has a benchmark; give at least one "
            "@app.remote(benchmark_dataset=[...]) so workers can measure their score"
        )
    a = spec.autoscaling
    if a.max_workers < 1:
        raise DefinitionError("autoscaling max_workers must be at least 1")
    if a.max_workers < a.min_workers:
        raise DefinitionError(
            f"autoscaling max_workers ({a.max_workers}) must be at least min_workers ({a.min_workers})"
        )
    if not 0 <= a.target_util <= 1:
        raise DefinitionError(f"autoscaling target_util must be between 0 and 1, got {a.target_util}")
    if spec.ttl < 0:
        raise DefinitionError("ttl must not be negative")
    negative = [
        name
        for name in ("min_load", "min_cold_load", "cold_mult", "max_queue_time", "target_queue_time")
        if getattr(a, name) < 0
    ]
    if negative:
        raise DefinitionError(f"autoscaling {', '.join(negative)} must not be negative")
    d = spec.digests
    try:
        check_digest(d.bundle)
    except Exception:
        raise DefinitionError(f"spec.digests.bundle {d.bundle[:80]!r} is not a hex SHA-256 of the bundle") from None
    missing = [k for k in ("code", "environment", "autoscaling") if not getattr(d, k)]
    if missing:
        raise DefinitionError(f"spec.digests lacks {', '.join(missing)}: the service needs them to classify updates")


def _validate_image_settings(image: control_pb2.ImageSpec) -> None:
    """The image's Python environment, published ports and absolute copies as ``Image`` records them."""
    python_env = image.python_environment
    if python_env.venv_path and python_env.system_python:
        raise DefinitionError("the image sets both venv and use_system_python: keep one of them")
    venv = PurePosixPath(python_env.venv_path)
    if python_env.venv_path and (not venv.is_absolute() or ".." in venv.parts):
        raise DefinitionError(f"venv {python_env.venv_path[:200]!r} must be an absolute path without '..'")
    for port in image.published_ports:
        if not 1 <= port.port <= 65535 or port.protocol == common_pb2.PORT_PROTOCOL_UNSPECIFIED:
            raise DefinitionError(f"published port {port.port} needs a number from 1 to 65535 and tcp or udp")
    for copied in image.absolute_copies:
        dest = PurePosixPath(copied.destination)
        if not dest.is_absolute() or ".." in dest.parts or len(dest.parts) < 2:
            raise DefinitionError(f"copy destination {copied.destination[:200]!r} must be absolute, without '..'")
        if copied.bundle_path != absolute_copy_bundle_path(copied.destination):
            raise DefinitionError(
                f"copy to {copied.destination[:200]!r}: the bundle must hold it at "
                f"{absolute_copy_bundle_path(copied.destination)!r}, not {copied.bundle_path[:200]!r}"
            )
