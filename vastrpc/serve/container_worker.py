"""A worker agent's container side: the image (pull, its Python, vastrpc's runtime, build steps), the serving container.

The agent (``vastrpc.serve.agent``) calls these on a container provider instead of applying
the image on its host: ``ensure_image`` pulls, ``python_of`` finds the image's interpreter and
the Python to install for, ``prepare`` readies vastrpc's runtime and runs the build steps in
a derived image, ``launch`` gives the serving process's container.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vastrpc._hostimage import HostPort, port_environment, protocol_name
from vastrpc._tls import TlsFiles
from vastrpc.api.v1 import control_pb2
from vastrpc.image import absolute_copy_bundle_path
from vastrpc.serve.container import (
    ENGINE_CLIENT_ENV,
    ContainerEngine,
    ContainerLaunch,
    check_storage,
    runtime_mounts,
)
from vastrpc.serve.image_build import BuildJob, build_steps, derived_image
from vastrpc.serve.image_python import probe, runtime_site
from vastrpc.serve.install import Log, PythonTarget

__all__ = ["ContainerWorker", "Prepared"]

# What the engine command itself needs of the agent's environment.


@dataclass(frozen=True)
class Prepared:
    """What a revision's serving container runs: the image, its interpreter and vastrpc's runtime for it.

    Attributes:
        image: The image to run: ``from_image``, or the image derived from it by the build steps.
        python: The interpreter inside it (``python3``, or a venv's).
        version: Its ``MAJOR.MINOR``.
        runtime: vastrpc's dependencies built for that version; None: the host's own (same version).
    """

    image: str
    python: str
    version: str
    runtime: Path | None


class ContainerWorker:
    """One worker's containers: the engine, where its caches are, what every container is given.

    Args:
        engine: The container engine.
        home: The vastrpc home (shared caches: ``envs``, ``runtimes``, ``images``).
        worker_id: The worker's id (labels and names its containers).
        bind_host: The address the serving process listens on (published ports are on it too).
        tls: The worker's TLS files, mounted read-only into serving containers.
        log: Receives progress lines (the worker log).
    """

    def __init__(
        self, engine: ContainerEngine, home: Path, worker_id: str, bind_host: str, tls: TlsFiles | None, log: Log
    ) -> None:
        self.engine = engine
        self.home = home
        self.worker_id = worker_id
        self.bind_host = bind_host
        self.tls = tls
        self.log = log
        # Pulls and builds get the agent's environment (a proxy, the engine's settings); a serving
        # container's engine command only what the engine needs, since its variables reach the container.
        self.env = dict(os.environ)
        self._launch_env = {k: v for k, v in os.environ.items() if k in ENGINE_CLIENT_ENV}

    async def ensure_image(
        self,
        image: control_pb2.ImageSpec,
        present: Awaitable[str],
        workdir: Path,
        on_state: Callable[[str], Awaitable[None]],
    ) -> str:
        """Check the image's storage, pull it when ``present`` (its id, asked earlier) is empty; returns its id."""
        await asyncio.to_thread(check_storage, image.storage, workdir)
        image_id = await present
        if not image_id:
            await on_state("pulling")
            await self.engine.pull(image.from_image, self.env, self.log)
            image_id = await self.engine.image_id(image.from_image, self.env)
        return image_id

    async def python_of(
        self, image: control_pb2.ImageSpec, image_id: str
    ) -> tuple[str, PythonTarget | None, list[HostPort]]:
        """The image's interpreter, the Python to install for (None: the host's version) and the published ports.

        The container shares the host's network, so each published port is itself.

        Raises:
            DeploymentError: (step ``image``) the image's Python cannot run vastrpc.
        """
        for copied in image.absolute_copies:
            self.log(f"copy to {copied.destination}: mounted there in the container")
        ports = [
            HostPort(int(p.port), protocol_name(p.protocol), int(p.port), self.bind_host) for p in image.published_ports
        ]
        for port in ports:
            self.log(
                f"publish_port {port.port}/{port.protocol}: {port.address} (the container shares the host's network)"
            )
        python_env = image.python_environment
        python = f"{python_env.venv_path.rstrip('/')}/bin/python" if python_env.venv_path else "python3"
        if python_env.venv_path or python_env.system_python:
            self.log(f"serving with the image's {python}")
        target = await probe(
            self.engine,
            image.from_image,
            image_id,
            python,
            cache_dir=self.home / "images",
            env=self.env,
            worker_id=self.worker_id,
        )
        return python, target, ports

    async def prepare(
        self,
        image: control_pb2.ImageSpec,
        image_id: str,
        python: str,
        target: PythonTarget | None,
        *,
        bundle_dir: Path,
        site: Path | None,
        secrets: Mapping[str, str],
    ) -> Prepared:
        """vastrpc's runtime for ``target`` (built once per host) and the image with the build steps run in it.

        Raises:
            DeploymentError: (step ``image``) the runtime cannot be installed; (step ``build``)
                a build step failed.
        """
        runtime = None
        if target is not None:
            runtime = await asyncio.to_thread(runtime_site, target, self.home / "runtimes", log=self.log)
        steps = build_steps(image.apt_packages, image.startup_commands)
        job = BuildJob(
            base=image.from_image,
            base_id=image_id,
            python=python,
            steps=steps,
            env=dict(image.env),
            secrets=secrets,
            bundle=bundle_dir,
            site=site,
            timeout=(image.startup_timeout or 600.0) + (600.0 if image.apt_packages else 0.0),
        )
        served = await derived_image(
            self.engine, job, lock_dir=self.home / "images", worker_id=self.worker_id, env=self.env, log=self.log
        )
        version = target.label if target is not None else "{}.{}".format(*sys.version_info[:2])
        return Prepared(image=served, python=python, version=version, runtime=runtime)

    def launch(
        self,
        prepared: Prepared,
        image: control_pb2.ImageSpec,
        bundle_dir: Path,
        env: Mapping[str, str],
        secrets: Mapping[str, str],
        ports: list[HostPort],
    ) -> ContainerLaunch:
        """The container that serves the revision.

        It gets the deployment's env vars and secrets, the published ports' variables and
        what vastrpc needs (its runtime's PYTHONPATH), nothing else of the agent's environment;
        the bundle (its working directory), the pip environment and the TLS files are mounted
        at their paths on this host, each absolute copy at its destination.
        """
        runtime, runtime_paths = runtime_mounts(prepared.runtime)
        mounts = [(str(bundle_dir), str(bundle_dir), False)]
        mounts += [(host, inside, True) for host, inside in runtime]
        host_paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        site = [p for p in host_paths if p.startswith(str(self.home / "envs"))]
        mounts += [(p, p, True) for p in site]
        if self.tls is not None:
            files = (self.tls.cert_file, self.tls.key_file, self.tls.ca_file)
            mounts += [(str(f), str(f), True) for f in files if f is not None]
        for copied in image.absolute_copies:
            mounts.append((str(bundle_dir / absolute_copy_bundle_path(copied.destination)), copied.destination, False))
        inside = {"PYTHONUNBUFFERED": "1", **{k: v for k, v in env.items() if k.startswith("MALLOC_")}}
        inside.update(image.env)
        inside.update(secrets)
        inside.update(port_environment(ports))
        inside["PYTHONPATH"] = os.pathsep.join([*site, str(bundle_dir), *runtime_paths])
        return self.engine.launch(
            worker_id=self.worker_id,
            image=prepared.image,
            python=prepared.python,
            version=prepared.version,
            workdir=bundle_dir,
            mounts=mounts,
            env=inside,
            client_env=self._launch_env,
        )
