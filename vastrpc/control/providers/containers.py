"""The container providers (podman, docker): agents on this host, each serving process in a container of the image.

The agent stays on the host, as with the local provider: it talks to the control service,
downloads and installs, keeps the caches. Each revision's serving process runs in a
container of the deployment's ``from_image`` (``vastrpc.serve.container``), which the
engine pulls first when it lacks it (the worker's state ``pulling``), or of the image its
build steps derive from it (``vastrpc.serve.image_build``). Tier 3 updates (a new
image, env or secrets) restart each worker in its slot, so it re-images in place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from vastrpc._errors import DefinitionError
from vastrpc._tls import TlsFiles
from vastrpc.api.v1 import control_pb2
from vastrpc.config import ControlConfig
from vastrpc.control.providers.inventory import Inventory
from vastrpc.control.providers.local import LocalProcessProvider
from vastrpc.serve.container import (
    ENGINE_CLIENT_ENV,
    ENGINE_ENV,
    ENV_CONTAINER_ENGINE,
    ENV_CONTAINER_RUNTIME,
    WORKER_LABEL,
)

__all__ = ["ContainerProvider", "DockerProvider", "PodmanProvider", "write_containers_conf"]

log = logging.getLogger(__name__)

# Podman's settings for the containers of this service (CONTAINERS_CONF): no default ulimits,
# which an unprivileged or nested host refuses ("setrlimit RLIMIT_NOFILE: Operation not permitted").
_CONTAINERS_CONF = """\
# Written by vastrpc's podman provider; podman reads it through CONTAINERS_CONF.
[containers]
default_ulimits = []
"""


def write_containers_conf(home: Path) -> Path:
    """Write ``home/containers/containers.conf`` (podman's settings for vastrpc's containers); returns its path."""
    path = home / "containers" / "containers.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != _CONTAINERS_CONF:
        path.write_text(_CONTAINERS_CONF)
    return path


class ContainerProvider(LocalProcessProvider):
    """Runs worker agents on this host whose serving processes run in containers of the deployment's image.

    Args:
        home: The vastrpc home (logs, caches, podman's ``containers/containers.conf``).
        engine: ``"podman"`` or ``"docker"``.
        runtime: The OCI runtime podman runs containers with; None: ``runc`` where installed
            (crun fails on hosts with hybrid cgroups), else podman's default.
        environ: The environment agents inherit (default: this process's).
        **options: As for LocalProcessProvider.
    """

    engine = ""

    @classmethod
    def from_config(cls, config: ControlConfig, *, worker_command: Sequence[str] | None = None) -> ContainerProvider:
        """Workers under the service's home, their serving processes in containers of ``cls.engine``.

        Raises:
            DefinitionError: The engine's command is not installed on this host.
            InventoryError: ``config.inventory_file`` cannot be read.
        """
        inventory = Inventory.load(config.inventory_file) if config.inventory_file is not None else None
        return cls(
            Path(config.home),
            runtime=config.container_runtime,
            argv_prefix=worker_command,
            worker_tls=config.tls,
            inventory=inventory,
        )

    def __init__(
        self,
        home: Path,
        *,
        runtime: str | None = None,
        environ: Mapping[str, str] | None = None,
        argv_prefix: Sequence[str] | None = None,
        worker_tls: TlsFiles | None = None,
        inventory: Inventory | None = None,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        command = shutil.which(self.engine, path=env.get("PATH"))
        if command is None:
            hint = "apt-get install podman runc" if self.engine == "podman" else "install Docker Engine"
            raise DefinitionError(
                f"--provider {self.engine} runs serving processes in containers, but there is no {self.engine} "
                f"command on this host's PATH: {hint}, or use --provider local"
            )
        # What the agents need for the engine, besides the allow-list every worker inherits.
        agent_env = {k: env[k] for k in ENGINE_ENV if k in env}
        agent_env[ENV_CONTAINER_ENGINE] = command
        if self.engine == "podman":
            agent_env["CONTAINERS_CONF"] = str(write_containers_conf(Path(home)))
            if runtime is None:
                runtime = "runc" if shutil.which("runc", path=env.get("PATH")) else ""
            if runtime:
                agent_env[ENV_CONTAINER_RUNTIME] = runtime
        self._engine_env: dict[str, str] = {k: v for k, v in {**env, **agent_env}.items() if k in ENGINE_CLIENT_ENV}
        self._command = command
        # The agents run as this service's user, the engine's: the deployment's code runs in a
        # container that sees only its bundle, its packages and the TLS files it serves with.
        super().__init__(
            home,
            argv_prefix=argv_prefix,
            environ=env,
            agent_env=agent_env,
            worker_tls=worker_tls,
            inventory=inventory,
            spare=False,  # its agents start containers: a pre-started host interpreter would not serve
        )

    async def image_warnings(self, image: control_pb2.ImageSpec) -> list[str]:
        """Nothing: a container honours absolute copies (mounted), the image's Python and its ports (host network)."""
        return []

    async def _watch(self, worker_id: str, proc: asyncio.subprocess.Process) -> None:
        await super()._watch(worker_id, proc)
        await self._remove_containers(worker_id)

    async def _remove_containers(self, worker_id: str) -> None:
        """Remove what the worker left running (an agent killed outright leaves its container)."""
        try:
            lister = await asyncio.create_subprocess_exec(
                self._command,
                "ps",
                "-aq",
                "--filter",
                f"label={WORKER_LABEL}={worker_id}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=self._engine_env,
            )
            out, _ = await lister.communicate()
            ids = out.decode().split()
            if not ids:
                return
            log.info("worker %s: removing its %d container(s) left running", worker_id, len(ids))
            remover = await asyncio.create_subprocess_exec(
                self._command,
                "rm",
                "-f",
                *ids,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=self._engine_env,
            )
            await remover.wait()
        except OSError as exc:
            log.warning("worker %s: cannot list its containers: %s", worker_id, exc)


class PodmanProvider(ContainerProvider):
    """``--provider podman``: serving processes in Podman containers (``--runtime runc`` where installed)."""

    engine = "podman"


class DockerProvider(ContainerProvider):
    """``--provider docker``: serving processes in Docker containers (needs a Docker engine; not tested here)."""

    engine = "docker"
