"""The image a deployment's workers run in, its requirements (and their keyword shorthand), and its autoscaling."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vastrpc._errors import DefinitionError
from vastrpc.query import COLUMNS, LABEL_PREFIX, Query, gpu_name, label

__all__ = [
    "ABSOLUTE_COPY_FOLDER",
    "LABEL_PREFIX",
    "PORT_PROTOCOLS",
    "REQUIREMENT_FILTERS",
    "Autoscaling",
    "Image",
    "absolute_copy_bundle_path",
    "keyword_queries",
    "stored_keyword_queries",
]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The bundle folder that holds the copies with absolute destinations (``copy(src, "/app/x")``
# is stored at ``.vastrpc-absolute/app/x``). The bundle builder never walks or imports a name
# starting with a dot, and refuses relative copy destinations inside it, so nothing else lands there.
ABSOLUTE_COPY_FOLDER = ".vastrpc-absolute"
# The transports ``publish_port`` accepts.
PORT_PROTOCOLS = ("tcp", "udp")


def absolute_copy_bundle_path(dest: str) -> str:
    """Where the bundle stores a copy whose destination is the absolute path ``dest`` (already checked)."""
    return "/".join((ABSOLUTE_COPY_FOLDER, *PurePosixPath(dest).parts[1:]))


def _copy_destination(target: str) -> str:
    """``target`` checked and normalised: absolute (a path on the worker) or relative (in the bundle)."""
    posix = PurePosixPath(target.replace("\\", "/"))
    if ".." in posix.parts:
        raise DefinitionError(
            f"copy: destination {target!r} must not contain '..': give a relative path inside the bundle "
            "(e.g. 'data/config.json') or an absolute path on the worker (e.g. '/app/config.json')"
        )
    if posix.is_absolute():
        if len(posix.parts) < 2:
            raise DefinitionError(f"copy: destination {target!r} names no file or folder: e.g. '/app/config.json'")
        return str(posix)
    if len(target) > 1 and target[1] == ":":
        raise DefinitionError(f"copy: destination {target!r} must be a POSIX path, e.g. '/app/config.json'")
    if posix.parts and posix.parts[0] == ABSOLUTE_COPY_FOLDER:
        raise DefinitionError(
            f"copy: destination {target!r} is inside {ABSOLUTE_COPY_FOLDER}/, which vastrpc reserves for "
            "absolute destinations: pass the absolute path instead, e.g. '/app/config.json'"
        )
    return str(Path(target))


# The keyword filters ``Image.require`` also accepts, with the query each stands for.
REQUIREMENT_FILTERS: dict[str, str] = {
    "gpus": "GPUs per worker, e.g. 1: num_gpus >= N",
    "gpu_name": "GPU model, e.g. 'A100' (alias accelerator): gpu_name == NAME",
    "gpu_ram_gb": "GB of memory per GPU, at least: gpu_ram >= N",
    "cpus": "CPU cores per worker: cpu_cores_effective >= N",
    "ram_gb": "GB of RAM per worker: cpu_ram >= N",
    "labels": "node labels that must match, e.g. {'zone': 'us-east'}: label(KEY) == VALUE",
}
_KEYWORD_COLUMNS = {"gpus": "num_gpus", "gpu_ram_gb": "gpu_ram", "cpus": "cpu_cores_effective", "ram_gb": "cpu_ram"}
_ALIASES = {"accelerator": "gpu_name"}


def keyword_queries(filters: Mapping[str, Any]) -> list[Query]:
    """The queries the keyword filters of ``Image.require`` stand for (``gpus=2`` → ``num_gpus >= 2``).

    Raises:
        DefinitionError: An unknown filter, or a value of the wrong kind.
    """
    out: list[Query] = []
    for key, value in filters.items():
        name = _ALIASES.get(key, key)
        if name not in REQUIREMENT_FILTERS:
            accepted = ", ".join(f"{n}= ({text})" for n, text in REQUIREMENT_FILTERS.items())
            raise DefinitionError(
                f"require: unknown filter {key!r}; accepted filters: {accepted}; "
                "or pass queries, e.g. require(gpu_ram >= 48) with columns from vastrpc.query"
            )
        if name == "labels":
            if not isinstance(value, Mapping) or not value:
                raise DefinitionError(
                    "require: labels must be a non-empty dict of node labels, e.g. labels={'zone': 'us-east'}"
                )
            out += [label(k) == v for k, v in value.items()]
        elif name == "gpu_name":
            if not isinstance(value, str) or not value.strip():
                raise DefinitionError(f"require: {key} must be a GPU model name such as 'A100', got {value!r}")
            out.append(gpu_name == value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DefinitionError(f"require: {name} must be a number, got {value!r}")
            if value < 0 or (value == 0 and name != "gpus"):
                least = "at least 0" if name == "gpus" else "above 0"
                raise DefinitionError(f"require: {name} must be {least}, got {value!r}")
            out.append(COLUMNS[_KEYWORD_COLUMNS[name]] >= value)
    return out


def stored_keyword_queries(filters: Mapping[str, str]) -> list[Query]:
    """The queries of keyword filters as the contract's old ``requirements`` map stored them (all text).

    Raises:
        DefinitionError: An unknown filter, or a value that is not a number where one is needed.
    """
    parsed: dict[str, Any] = {}
    labels = {k.removeprefix(LABEL_PREFIX): v for k, v in filters.items() if k.startswith(LABEL_PREFIX)}
    for key, text in filters.items():
        if key.startswith(LABEL_PREFIX):
            continue
        if key in ("gpu_name", "accelerator"):
            parsed[key] = text
            continue
        try:
            parsed[key] = float(text)
        except ValueError:
            raise DefinitionError(f"require: the filter {key}={text!r} is not a number") from None
    if labels:
        parsed["labels"] = labels
    return keyword_queries(parsed)


def _check_names(kind: str, names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name.strip()):
            raise DefinitionError(f"{kind}: {name!r} is not a package name; pass one package per argument")
        out.append(name.strip())
    return out


def _check_env(kind: str, values: Mapping[str, object]) -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if not _ENV_NAME.match(key):
            raise DefinitionError(f"{kind}: {key!r} is not a valid environment variable name")
        if not isinstance(value, str):
            raise DefinitionError(f"{kind}: the value of {key} must be a string, not {type(value).__name__}")
        out[key] = value
    return out


@dataclass
class Image:
    """What a worker installs and runs before it imports the deployment module.

    Every method records its setting and returns the image, so calls chain::

        app.image("python:3.11-slim").pip_install("numpy").env(MODE="fast")

    Attributes:
        from_image: The base image. The local provider runs on the host's own interpreter.
        storage: GB of disk a worker asks for (Vast's ``storage``; default 50).
        startup_timeout: Seconds the startup commands (``run_script``, ``run_cmd``) may take
            together; past it they are killed and the deployment fails with their log tail.
    """

    from_image: str = "python:3.11-slim"
    storage: float = 50.0
    startup_timeout: float = 600.0
    pip_packages: list[str] = field(default_factory=list)
    apt_packages: list[str] = field(default_factory=list)
    env_vars: dict[str, str] = field(default_factory=dict)
    secret_vars: dict[str, str] = field(default_factory=dict, repr=False)
    startup_commands: list[str] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)
    requirements: list[Query] = field(default_factory=list)
    venv_path: str | None = None
    system_python: bool = False
    published_ports: list[tuple[int, str]] = field(default_factory=list)

    def pip_install(self, *packages: str) -> Image:
        """Install pip packages (requirement specifiers, e.g. ``"numpy>=2"``) into the worker's environment."""
        self.pip_packages.extend(_check_names("pip_install", packages))
        return self

    def apt_get(self, *packages: str) -> Image:
        """Install Debian packages on the worker host (fails clearly where the host cannot)."""
        self.apt_packages.extend(_check_names("apt_get", packages))
        return self

    def env(self, **variables: str) -> Image:
        """Set environment variables for startup commands and the deployment module."""
        self.env_vars.update(_check_env("env", variables))
        return self

    def secrets(self, **variables: str) -> Image:
        """Set secret environment variables: like ``env``, but never stored in a bundle or shown in listings."""
        self.secret_vars.update(_check_env("secrets", variables))
        return self

    def run_script(self, script: str) -> Image:
        """Run a shell script (its text) at worker startup, in the bundle directory, after installs."""
        if not isinstance(script, str) or not script.strip():
            raise DefinitionError("run_script: pass the script's text as a non-empty string")
        self.startup_commands.append(script)
        return self

    def run_cmd(self, *argv: str) -> Image:
        """Run a command (its arguments, not a shell line) at worker startup, after installs."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise DefinitionError("run_cmd: pass the command and its arguments as strings, e.g. run_cmd('make', 'all')")
        self.startup_commands.append(shlex.join(argv))
        return self

    def copy(self, src: str | Path, dest: str | None = None) -> Image:
        """Copy a local file or folder (relative to the deployment's folder) to ``dest`` on the workers.

        A relative ``dest`` is a path inside the bundle (the worker's import root and working
        folder). An absolute one, as in Vast's ``copy("./local_config.json", "/app/config.json")``,
        is a path on the worker: the bundle carries the files (under ``.vastrpc-absolute/``)
        and a provider that gives each worker its own filesystem places them there. The local
        and Ray providers run workers on a shared host, where writing absolute paths could
        overwrite any file of the user running the service: they leave the files in the
        worker's own folder, at ``$VASTRPC_COPY_ROOT`` followed by ``dest``, and the deploy
        warns saying so (``os.environ.get("VASTRPC_COPY_ROOT", "") + dest`` reads it on every
        provider: a provider that places the files sets none). Omitted, ``dest`` is ``src``
        itself (its name, for an absolute ``src``).

        Raises:
            DefinitionError: ``dest`` holds ``..``, is ``/`` alone, or lies in the reserved folder.
        """
        src_path = Path(src)
        target = dest if dest is not None else (src_path.name if src_path.is_absolute() else str(src_path))
        if not isinstance(target, str) or not target.strip():
            raise DefinitionError(f"copy: destination {target!r} must be a non-empty path, e.g. '/app/config.json'")
        self.copies.append((str(src_path), _copy_destination(target)))
        return self

    def venv(self, path: str) -> Image:
        """Run on an existing virtual environment of the image, e.g. ``venv("/venv/main")`` (Vast's ``venv``).

        A provider that runs the image uses that environment's Python. The local and Ray
        providers run workers on the host: they use ``path`` when it is a virtual environment
        on that host whose Python is the host's version and imports vastrpc, and otherwise
        keep the host's interpreter, the deploy warning that they did. Calling again replaces
        the path.

        Raises:
            DefinitionError: ``path`` is not an absolute path, or ``use_system_python()`` was called.
        """
        if not isinstance(path, str) or not PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise DefinitionError(
                f"venv: {path!r} must be the absolute path of a virtual environment in the image, "
                "without '..', e.g. venv('/venv/main')"
            )
        if self.system_python:
            raise DefinitionError(
                "venv: use_system_python() was called already; the two are exclusive: keep venv(path) "
                "to run on that environment, or use_system_python() for the image's system Python"
            )
        self.venv_path = str(PurePosixPath(path))
        return self

    def use_system_python(self) -> Image:
        """Run on the image's system Python instead of a managed virtual environment (Vast's ``use_system_python``).

        A provider that runs the image uses its ``python3`` (pip packages installed into it).
        The local and Ray providers always run workers on the host's interpreter, pip
        packages in vastrpc's cached environment on top; the deploy warns that the setting
        waits for a provider that runs the image. Calling again changes nothing.

        Raises:
            DefinitionError: ``venv(path)`` was called.
        """
        if self.venv_path is not None:
            raise DefinitionError(
                f"use_system_python: venv({self.venv_path!r}) was called already; the two are exclusive: keep "
                "one of them"
            )
        self.system_python = True
        return self

    def publish_port(self, number: int, type_: str = "tcp") -> Image:
        """Publish a port of the worker, e.g. ``publish_port(8080, "tcp")`` (Vast's ``publish_port``).

        Each worker makes it reachable at a ``host:port`` shown in its listing (``vastrpc ls``,
        ``Worker.published_ports``). On the local and Ray providers the host port is a free
        one the worker picks on the address it serves on: the deployment's processes find it
        in ``VASTRPC_PORT_<number>`` (and Vast's ``VAST_TCP_PORT_<number>`` or
        ``VAST_UDP_PORT_<number>``) and listen on it. Publishing the same port and type again
        changes nothing.

        Raises:
            DefinitionError: ``number`` is not an integer in 1–65535, or ``type_`` not "tcp" or "udp".
        """
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise DefinitionError(f"publish_port: the port must be an integer from 1 to 65535, got {number!r}")
        protocol = type_.lower() if isinstance(type_, str) else type_
        if protocol not in PORT_PROTOCOLS:
            raise DefinitionError(f"publish_port: type_ must be 'tcp' or 'udp', got {type_!r}")
        if (number, protocol) not in self.published_ports:
            self.published_ports.append((number, protocol))
        return self

    def require(self, *queries: Query, **filters: object) -> Image:
        """Hardware a worker's host must offer, as queries: ``require(gpu_ram >= 48, gpu_name == H100_SXM)``.

        Queries are built from the columns of ``vastrpc.query`` (Vast's ``vastai.data.query``
        with the same names: ``gpu_name.in_([RTX_4090, RTX_5090])``, ``cpu_cores >= 16``).
        Keyword filters are shorthand for queries (see ``REQUIREMENT_FILTERS``): ``gpus=N`` is
        ``num_gpus >= N``, ``gpu_name="A100"`` (alias ``accelerator``) ``gpu_name == "A100"``,
        ``gpu_ram_gb=N`` ``gpu_ram >= N``, ``cpus=N`` ``cpu_cores_effective >= N``,
        ``ram_gb=N`` ``cpu_ram >= N`` and ``labels={"zone": "us-east"}``
        ``label("zone") == "us-east"``. Calling again adds queries; a keyword filter replaces
        the earlier queries on its column with the same operator.

        A cluster provider places each worker on a node that meets every query and fails the
        deploy, naming the query, when none does; the local provider runs the worker on this
        machine anyway and warns about each query the machine does not meet. Columns no
        provider can know (prices, bandwidth, reliability...) are accepted and reported as
        not applicable.

        Raises:
            DefinitionError: A positional argument that is not a query, an unknown filter, or a
                value of the wrong kind.
        """
        for query in queries:
            if not isinstance(query, Query):
                raise DefinitionError(
                    f"require: {query!r} is not a query; build one from a column of vastrpc.query, "
                    "e.g. require(gpu_ram >= 48) or require(gpu_name.in_([RTX_4090, RTX_5090]))"
                )
        for query in keyword_queries(filters):
            self.requirements[:] = [q for q in self.requirements if (q.column, q.op) != (query.column, query.op)]
            self.requirements.append(query)
        for query in queries:
            if query not in self.requirements:
                self.requirements.append(query)
        return self


@dataclass(frozen=True)
class Autoscaling:
    """How many workers an endpoint runs, and how full routing lets each one get: Vast's endpoint parameters.

    The control service's autoscaler measures the endpoint's *load* in calls per second:
    each worker's calls in flight (running and queued, from its heartbeats) as a share of
    its slots, times its *perf* (its benchmark score, calls per second with every slot
    busy): ``load = sum(in_flight / slots * perf)``. It then runs enough workers for
    ``max(load / target_util, min_load)`` calls per second of active capacity, plus the
    largest inactive capacity of ``cold_mult``, ``min_cold_load`` and ``cold_workers``, and
    more while the endpoint's queue time is above ``target_queue_time``; all within
    ``min_workers`` and ``max_workers``. docs/configuration.md has the formulas and how each
    default compares with Vast's. Every field is tier 1 (applied in place).

    Attributes:
        min_workers: Never fewer workers (default 1). ``0`` lets the endpoint scale to zero
            once ``inactivity_timeout`` allows it.
        max_workers: Never more workers, active and inactive together (default 1).
        cold_workers: Inactive (idle, ready) workers kept beyond what the load needs; they
            stay after the inactivity timeout too; waking from zero starts this many, at
            least one (default 0).
        target_util: The fraction of the active capacity the load should fill, in (0, 1];
            lower keeps more headroom (default 0.8).
        inactivity_timeout: Seconds without any call after which the endpoint may go to
            zero active workers (default 300). ``0`` turns that gate off (the load alone
            decides); a negative value never lets it go below one worker.
        min_load: The least active capacity to keep, in calls per second (default 0: none).
        min_cold_load: The least total capacity (active and inactive) to keep, in calls per
            second (default 0: none).
        cold_mult: Total capacity as a multiple of the load; what it adds beyond the load is
            kept as inactive workers (default 1: none).
        max_queue_time: Seconds of expected queue (queued calls / perf) a worker may hold
            before routing treats it as full and calls wait in the client for room
            (default 30; 0: no limit but the functions' ``max_queue``).
        target_queue_time: Seconds of queue across the endpoint (queued calls / total perf)
            above which workers are added (default 5; 0: off).
    """

    min_workers: int = 1
    max_workers: int = 1
    cold_workers: int = 0
    target_util: float = 0.8
    inactivity_timeout: float = 300.0
    min_load: float = 0.0
    min_cold_load: float = 0.0
    cold_mult: float = 1.0
    max_queue_time: float = 30.0
    target_queue_time: float = 5.0

    def __post_init__(self) -> None:
        for name in ("min_workers", "max_workers", "cold_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DefinitionError(f"configure_autoscaling: {name} must be a non-negative integer, got {value!r}")
        for name in (
            "target_util",
            "inactivity_timeout",
            "min_load",
            "min_cold_load",
            "cold_mult",
            "max_queue_time",
            "target_queue_time",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DefinitionError(f"configure_autoscaling: {name} must be a finite number, got {value!r}")
        if self.max_workers < 1:
            raise DefinitionError("configure_autoscaling: max_workers must be at least 1")
        if self.min_workers > self.max_workers:
            raise DefinitionError(
                f"configure_autoscaling: min_workers ({self.min_workers}) is above max_workers ({self.max_workers}): "
                "raise max_workers or lower min_workers"
            )
        if not 0 < self.target_util <= 1:
            raise DefinitionError(
                f"configure_autoscaling: target_util must be in (0, 1], got {self.target_util!r} "
                "(0.8 keeps 25% headroom)"
            )
        for name, unit in (
            ("min_load", "calls per second"),
            ("min_cold_load", "calls per second"),
            ("cold_mult", "a multiple of the load"),
            ("max_queue_time", "seconds; 0 for no limit"),
            ("target_queue_time", "seconds; 0 for off"),
        ):
            if getattr(self, name) < 0:
                raise DefinitionError(
                    f"configure_autoscaling: {name} must be >= 0 ({unit}), got {getattr(self, name)!r}"
                )
