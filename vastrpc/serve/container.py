"""Serving processes inside containers: the engine's command line, image pulls, mounts and the container's environment.

A container provider (``--provider podman`` or ``docker``) starts worker agents on its host,
as the local provider does, with ``VASTRPC_CONTAINER_ENGINE`` set; the agent then runs each
revision's serving process inside a container of the deployment's image (``from_image``, or
the image derived from it by its build steps: ``vastrpc.serve.image_build``). The image
needs only a CPython >= 3.11: vastrpc is mounted read-only from the host, with its
dependencies — the host's own site directories for the host's Python version, else a
folder built for the image's version (``vastrpc.serve.image_python``) — ``runtime_mounts``;
the bundle, the pip environment and the TLS files are mounted too, and the container shares
the host's network, so a published port is the port itself. The serving process's
configuration goes on the container's stdin and its events come back on its stdout
(``BOOTSTRAP`` moves print output to stderr, the worker log).
"""

from __future__ import annotations

import asyncio
import shutil
import sysconfig
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vastrpc._errors import DeploymentError

__all__ = [
    "BOOTSTRAP",
    "ENGINES",
    "ENV_CONTAINER_ENGINE",
    "ENV_CONTAINER_RUNTIME",
    "ContainerEngine",
    "ContainerLaunch",
    "check_storage",
    "runtime_mounts",
]

# Set by a container provider for the agents it starts: the engine's command, and (podman)
# the OCI runtime to run containers with.
ENV_CONTAINER_ENGINE = "VASTRPC_CONTAINER_ENGINE"
ENV_CONTAINER_RUNTIME = "VASTRPC_CONTAINER_RUNTIME"
# The engine command's own settings (podman's configuration, a rootless engine's runtime
# folder, a remote Docker daemon): what of its environment an agent gives the command.
ENGINE_ENV = ("XDG_RUNTIME_DIR", "DOCKER_HOST", "DOCKER_CONFIG", "CONTAINER_HOST")
ENGINE_CLIENT_ENV = ("PATH", "CONTAINERS_CONF", "HOME", *ENGINE_ENV)
ENGINES = ("podman", "docker")
# Where the host's vastrpc and its dependencies appear inside a container.
_PACKAGE_MOUNT = "/opt/vastrpc/pkg"
_SITE_MOUNT = "/opt/vastrpc/site"
# Label on every container an agent starts: its provider removes what an agent killed outright leaves.
WORKER_LABEL = "vastrpc.worker"

# Run as ``python -c BOOTSTRAP MAJOR.MINOR``: checks the image's Python is the one the mounted
# runtime was prepared for (the agent probed it; a build step may have replaced it since),
# keeps stdout for the events (prints go to stderr), then runs the serving process.
BOOTSTRAP = """\
import json, os, sys
events = os.dup(1)
os.dup2(2, 1)
want = sys.argv[1]
have = "{}.{}".format(*sys.version_info[:2])
if have != want:
    message = (
        f"the image's {sys.executable} is Python {have}, but vastrpc's runtime (grpcio, protobuf, cryptography) "
        f"was prepared for Python {want}, the version the image's interpreter had before its build steps: "
        "keep the image's python3 (or venv) at one version"
    )
    os.write(events, (json.dumps({"event": "failed", "step": "image", "message": message}) + "\\n").encode())
    sys.exit(3)
sys.argv = ["vastrpc.serve.process", str(events)]
import runpy
runpy.run_module("vastrpc.serve.process", run_name="__main__", alter_sys=True)
"""


def runtime_mounts(site: Path | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """vastrpc's package and its dependencies' site directories, as (host path, container path) mounts.

    Args:
        site: A folder of vastrpc's dependencies built for the image's Python
            (``vastrpc.serve.image_python``); None: the host's own site directories,
            for an image whose Python is the host's version.

    Returns:
        The mounts (read-only) and the container's PYTHONPATH entries for them, vastrpc first.
    """
    package = Path(__file__).resolve().parents[1]
    mounts = [(str(package), f"{_PACKAGE_MOUNT}/vastrpc")]
    paths = [_PACKAGE_MOUNT]
    if site is not None:
        sites: Sequence[str] = [str(site)]
    else:
        sites = list(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    for index, path in enumerate(s for s in sites if Path(s).is_dir()):
        mounts.append((path, f"{_SITE_MOUNT}{index}"))
        paths.append(f"{_SITE_MOUNT}{index}")
    return mounts, paths


def check_storage(storage: str, where: Path) -> None:
    """Fail when the image's ``storage`` (e.g. ``"50GB"``) exceeds the free disk under ``where``.

    Raises:
        DeploymentError: Not enough free disk (step ``placement``), naming both figures.
    """
    text = storage.strip().upper().removesuffix("GB")
    try:
        wanted = float(text) if text else 0.0
    except ValueError:
        return
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free / 1e9
    if wanted > free:
        raise DeploymentError(
            f"the image asks for storage={wanted:g} GB per worker but only {free:.1f} GB is free under {where} "
            "on this host: lower image(..., storage=...) or free disk space",
            step="placement",
        )


@dataclass(frozen=True)
class ContainerEngine:
    """The container engine an agent runs serving processes with.

    Attributes:
        engine: ``"podman"`` or ``"docker"`` (its command, found on PATH).
        runtime: The OCI runtime podman runs containers with (e.g. ``"runc"``); empty: the
            engine's default. Docker ignores it (its daemon decides).
        gpus: GPU indexes given to every container (``--device nvidia.com/gpu=N`` with
            podman, ``--gpus device=N`` with docker); empty: none. The provider's GPU
            assignment (``control/providers/gpus.py``) hands them to the agent in
            ``NVIDIA_VISIBLE_DEVICES``.
    """

    engine: str
    runtime: str = ""
    gpus: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ContainerEngine | None:
        """From the engine and runtime variables and the worker's GPUs; None when no engine is set.

        The worker's GPUs are the indexes in ``NVIDIA_VISIBLE_DEVICES`` that the provider set
        for this worker; anything else there (unset, ``none``, ``all``) gives the container none.
        """
        engine = environ.get(ENV_CONTAINER_ENGINE, "")
        if not engine:
            return None
        devices = [d.strip() for d in environ.get("NVIDIA_VISIBLE_DEVICES", "").split(",")]
        gpus = tuple(int(d) for d in devices) if all(d.isdigit() for d in devices) else ()
        return cls(engine=engine, runtime=environ.get(ENV_CONTAINER_RUNTIME, ""), gpus=gpus)

    def gpu_options(self) -> list[str]:
        """The engine's options that give the container ``gpus``."""
        if not self.gpus:
            return []
        if self.engine == "docker":
            return ["--gpus", "device=" + ",".join(str(g) for g in self.gpus)]
        return [option for g in self.gpus for option in ("--device", f"nvidia.com/gpu={g}")]

    async def run_command(self, *args: str, env: Mapping[str, str]) -> tuple[int, str]:
        """Run the engine with ``args``; returns its exit code and its output (stdout and stderr merged)."""
        proc = await asyncio.create_subprocess_exec(
            self.engine,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    async def image_id(self, image: str, env: Mapping[str, str]) -> str:
        """The id of ``image`` in the engine; empty when the engine lacks it."""
        code, out = await self.run_command("image", "inspect", "--format", "{{.Id}}", image, env=env)
        return out.strip() if code == 0 else ""

    def run_options(self, name: str, worker_id: str, *, remove: bool = True) -> list[str]:
        """``ENGINE run`` with what every container of a worker gets: name, label, runtime, the host's network."""
        argv = [self.engine, "run", *(["--rm"] if remove else []), "-i", "--name", name]
        argv += ["--label", f"{WORKER_LABEL}={worker_id}"]
        if self.engine == "podman" and self.runtime:
            argv += ["--runtime", self.runtime]
        return [*argv, "--network", "host"]

    async def pull(self, image: str, env: Mapping[str, str], log: Callable[[str], None]) -> None:
        """Pull ``image``, its progress lines to ``log``.

        Raises:
            DeploymentError: The pull failed (step ``pull``): which image, and the engine's words.
        """
        log(f"pull: {self.engine} pull {image}")
        proc = await asyncio.create_subprocess_exec(
            self.engine,
            "pull",
            image,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
        )
        assert proc.stdout is not None
        lines: list[str] = []
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                lines.append(line)
                log(f"pull: {line}")
        if await proc.wait() != 0:
            why = lines[-1] if lines else f"{self.engine} pull exited with code {proc.returncode}"
            raise DeploymentError(
                f"cannot pull image {image!r} with {self.engine}: {why}; check the name in image(from_image=...), "
                f"that its registry is reachable from the worker's host, or load it there ({self.engine} load)",
                step="pull",
            )
        log(f"pull: {image} pulled")

    async def remove(self, name: str, env: Mapping[str, str]) -> None:
        """Remove the container ``name`` (killing it if it runs); nothing when there is none."""
        options = ["--time", "0"] if self.engine == "podman" else []
        await self.run_command("rm", "-f", *options, name, env=env)

    def launch(
        self,
        *,
        worker_id: str,
        image: str,
        python: str,
        version: str,
        workdir: Path,
        mounts: Sequence[tuple[str, str, bool]],
        env: Mapping[str, str],
        client_env: Mapping[str, str],
    ) -> ContainerLaunch:
        """The command that runs the serving process in a container of ``image``.

        Args:
            worker_id: Labels the container (``vastrpc.worker``) and names it.
            image: The deployment's image.
            python: The interpreter inside the image (``python3``, or a venv's).
            version: Its ``MAJOR.MINOR``, which the mounted runtime was prepared for.
            workdir: The bundle folder, mounted at its own path: the working directory.
            mounts: (host path, container path, read-only) for each mount.
            env: The container's whole environment (only these variables reach it).
            client_env: The engine command's own environment (PATH, CONTAINERS_CONF).
        """
        name = f"vastrpc-{worker_id}-{uuid.uuid4().hex[:8]}"
        argv = self.run_options(name, worker_id)
        argv += ["--workdir", str(workdir), *self.gpu_options()]
        for host, inside, read_only in mounts:
            argv += ["--volume", f"{host}:{inside}" + (":ro" if read_only else "")]
        for key in sorted(env):
            argv += ["--env", key]  # the value comes from the engine command's environment, off its argv
        argv += [image, python, "-c", BOOTSTRAP, version]
        return ContainerLaunch(self, name, argv, {**client_env, **env})


@dataclass(frozen=True)
class ContainerLaunch:
    """One serving process's container: its name, the engine command that runs it and that command's environment."""

    engine: ContainerEngine
    name: str
    argv: list[str]
    env: dict[str, str]

    async def remove(self) -> None:
        """Remove the container (after its engine command was killed, it may run on)."""
        await self.engine.remove(self.name, self.env)
