"""How an image's settings apply to a worker that runs on its host's interpreter (the local and Ray providers).

Such a worker has no filesystem or image of its own. ``Image.copy`` to an absolute path
stays in the worker's bundle folder, under ``ABSOLUTE_COPY_FOLDER``, and the deployment
finds it through ``VASTRPC_COPY_ROOT``; ``Image.venv`` is used only when it names a usable
environment on the host; ``Image.use_system_python`` cannot apply; each published port
gets a free port of the host, handed to the deployment's processes in the environment.
The providers say so in the deploy's warnings (``image_warnings``); the worker agent
applies it (``copy_root``, ``venv_python``, ``allocate_ports``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.image import ABSOLUTE_COPY_FOLDER

__all__ = [
    "ENV_COPY_ROOT",
    "PORT_PROTOCOL_VALUES",
    "HostPort",
    "allocate_ports",
    "copy_root",
    "image_warnings",
    "port_environment",
    "protocol_name",
    "python_for",
    "venv_python",
]

# Where a worker on a shared host keeps the copies with absolute destinations.
ENV_COPY_ROOT = "VASTRPC_COPY_ROOT"
# ``Image.publish_port``'s protocol names and the contract's values for them.
PORT_PROTOCOL_VALUES = {"tcp": common_pb2.PORT_PROTOCOL_TCP, "udp": common_pb2.PORT_PROTOCOL_UDP}
_PROTOCOL_NAMES = {value: name for name, value in PORT_PROTOCOL_VALUES.items()}
_VENV_CHECK = "import sys, vastrpc; print('{}.{}'.format(*sys.version_info[:2]))"


def protocol_name(protocol: int) -> str:
    """``"tcp"`` or ``"udp"`` for a ``PortProtocol`` value (tcp for an unspecified one)."""
    return _PROTOCOL_NAMES.get(protocol, "tcp")  # type: ignore[call-overload]


@dataclass(frozen=True)
class HostPort:
    """One published port as a worker on a shared host makes it reachable.

    Attributes:
        port: The port the deployment published (``Image.publish_port``).
        protocol: ``"tcp"`` or ``"udp"``.
        host_port: The free port of the host given to it.
        host: The address the worker serves on (``[...]`` around an IPv6 address).
    """

    port: int
    protocol: str
    host_port: int
    host: str

    @property
    def address(self) -> str:
        """``host:port`` where clients reach it."""
        return f"{self.host}:{self.host_port}"


def copy_root(bundle_dir: Path) -> Path:
    """Where a worker on a shared host holds the copies with absolute destinations (``$VASTRPC_COPY_ROOT``)."""
    return bundle_dir / ABSOLUTE_COPY_FOLDER


def allocate_ports(host: str, ports: Sequence[common_pb2.PublishedPort]) -> list[HostPort]:
    """A free port of ``host`` for each published port, of the same protocol.

    The port is free when picked and released at once for the deployment to bind, so
    another process could take it meanwhile; a fresh one is picked for every serving process.
    """
    bare = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    out = []
    for published in ports:
        protocol = protocol_name(published.protocol)
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        with socket.socket(family, kind) as sock:
            sock.bind((bare, 0))
            host_port = sock.getsockname()[1]
        out.append(HostPort(int(published.port), protocol, host_port, host))
    return out


def port_environment(ports: Sequence[HostPort]) -> dict[str, str]:
    """The variables that tell a deployment where it listens, for each published port ``N``.

    ``VASTRPC_PORT_N`` (the TCP port when ``N`` is published for both protocols) and Vast's
    ``VAST_TCP_PORT_N`` / ``VAST_UDP_PORT_N``: the host port to listen on, which is also
    the one clients reach (no mapping in between); ``VASTRPC_PORTS_HOST`` and Vast's
    ``PUBLIC_IPADDR``: the address the ports were picked on, to listen on. Nothing without ports.
    """
    env: dict[str, str] = {}
    for p in sorted(ports, key=lambda p: p.protocol != "tcp"):
        env.setdefault(f"VASTRPC_PORT_{p.port}", str(p.host_port))
        env[f"VAST_{p.protocol.upper()}_PORT_{p.port}"] = str(p.host_port)
        env["VASTRPC_PORTS_HOST"] = env["PUBLIC_IPADDR"] = p.host.strip("[]")
    return env


def venv_python(path: str, env: Mapping[str, str]) -> tuple[str | None, str]:
    """The Python of the virtual environment ``path`` when a worker on this host can serve with it.

    It can when it exists, runs, is this interpreter's version (the packages vastrpc
    installs are built for it) and imports vastrpc with ``env``.

    Returns:
        (its python, "") or (None, why not, in words).
    """
    python = Path(path) / "bin" / "python"
    if not python.exists():
        return None, f"there is no virtual environment at {path} on this host ({python} does not exist)"
    try:
        done = subprocess.run(
            [str(python), "-c", _VENV_CHECK],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{python} does not run on this host ({exc})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{python} cannot import vastrpc ({last})"
    version = "{}.{}".format(*sys.version_info[:2])
    if done.stdout.strip() != version:
        return None, f"{python} is Python {done.stdout.strip()}, the worker runs Python {version}"
    return str(python), ""


def image_warnings(image: control_pb2.ImageSpec, *, provider: str, environ: Mapping[str, str] | None) -> list[str]:
    """What a provider that runs workers on a host's interpreter does differently from the image's settings.

    Args:
        image: The revision's image.
        provider: The provider's words for where workers run, e.g. "the local provider runs
            workers as processes on this host".
        environ: The environment the workers get, to check ``Image.venv`` on this host; None
            when workers run on other hosts (the check is then each worker's).
    """
    notes = []
    for copied in image.absolute_copies:
        notes.append(
            f"copy to {copied.destination}: {provider}, where writing absolute paths could overwrite any file "
            f"of the user running the service; each worker keeps it in its own bundle folder instead, at "
            f"${ENV_COPY_ROOT}{copied.destination} (read os.environ['{ENV_COPY_ROOT}'] + '{copied.destination}')"
        )
    python_env = image.python_environment
    if python_env.venv_path:
        if environ is None:
            notes.append(
                f"venv {python_env.venv_path}: {provider}; each worker serves with that environment's Python "
                "where it exists there, is the worker's Python version and imports vastrpc, else with the "
                "worker's own interpreter (its log says which)"
            )
        else:
            python, reason = venv_python(python_env.venv_path, environ)
            if python is None:
                notes.append(
                    f"venv {python_env.venv_path}: {reason}; {provider}, so workers run on its interpreter "
                    f"({sys.executable}) instead; the setting applies as written on a provider that runs the image"
                )
    if python_env.system_python:
        notes.append(
            f"use_system_python(): {provider}, so workers run on its interpreter, pip packages in vastrpc's "
            "cached environment on top; the setting applies on a provider that runs the image"
        )
    for published in image.published_ports:
        name = f"{published.port}/{protocol_name(published.protocol)}"
        notes.append(
            f"publish_port {name}: {provider}, so each worker publishes it on a free port of its host: listen on "
            f"$VASTRPC_PORT_{published.port} (also VAST_{protocol_name(published.protocol).upper()}_PORT_"
            f"{published.port}); the listing (vastrpc ls) shows the host:port of each worker"
        )
    return notes


def python_for(image: control_pb2.ImageSpec, env: Mapping[str, str]) -> tuple[str, str]:
    """The interpreter a worker on this host serves ``image`` with, and a note when it is not the one asked for."""
    python_env = image.python_environment
    if python_env.venv_path:
        python, reason = venv_python(python_env.venv_path, env)
        if python is not None:
            return python, f"venv {python_env.venv_path}: serving with {python}"
        return sys.executable, f"venv {python_env.venv_path}: {reason}; serving with {sys.executable} instead"
    if python_env.system_python:
        return sys.executable, f"use_system_python(): this worker runs on its host's interpreter {sys.executable}"
    return sys.executable, ""
