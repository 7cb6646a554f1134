"""RayProvider: each worker is a Ray actor on a cluster node that runs the worker agent there as a subprocess.

The control service joins the cluster as a driver (lazily, off its event loop). Each
worker is an actor owned by it, holding the CPUs, GPUs and memory the revision's
requirements ask for (placement.py beside this module), spread across the nodes. The actor
launches ``python -m vastrpc worker`` on its node with ``CUDA_VISIBLE_DEVICES`` set to the
GPUs Ray gave it and ``VASTRPC_WORKER_HOST`` set to the node's address, which the worker
serves calls on and registers with the control service; clients then call it directly.
An actor dies with the control service (Ray's ownership), and its agent with the actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import inspect
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vastrpc._errors import DefinitionError, DeploymentError
from vastrpc._hostimage import image_warnings
from vastrpc._process import module_argv, package_pythonpath
from vastrpc._tls import TlsFiles, certificate_problems
from vastrpc._workerenv import inherited_environ
from vastrpc.api.v1 import control_pb2
from vastrpc.config import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_REQUIRE_CLIENT_CERT, ControlConfig
from vastrpc.control.providers.base import ENV_HOME, ExitCallback
from vastrpc.control.providers.placement import NodeInfo, Placement
from vastrpc.query import Query
from vastrpc.serve.agent import ENV_WORKER_HOST

__all__ = ["ENV_RAY_NODE_ID", "RayProvider", "WorkerHost"]

log = logging.getLogger(__name__)

NAMESPACE = "vastrpc"
# The Ray node a worker runs on, in its environment.
ENV_RAY_NODE_ID = "VASTRPC_RAY_NODE_ID"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_WILDCARD = ("", "0.0.0.0", "::", "[::]")
# How often the log of a worker on a node without this machine's files is copied here.
_MIRROR_INTERVAL = 1.0
_PR_SET_PDEATHSIG = 1


class WorkerHost:
    """The Ray actor that holds a worker's resources on its node and runs its agent there."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Future[int] | None = None
        self._log_path: Path | None = None
        self._tls_dir: Path | None = None

    async def start(self, launch: dict[str, Any]) -> dict[str, Any]:
        """Launch the agent as ``launch`` says; returns its pid and where it runs."""
        import ray

        worker_id = launch["worker_id"]
        home = Path(launch["home"])
        log_dir = home / "logs" / "workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = log_dir / f"{worker_id}.log"
        node_ip = ray.util.get_node_ip_address()
        node_id = ray.get_runtime_context().get_node_id()
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        # The node's allow-listed variables only: Ray's processes carry the cluster's settings
        # and whatever the user who started it exported.
        env = inherited_environ(os.environ)
        env.update(launch["env"])
        env[ENV_HOME] = str(home)
        env[ENV_WORKER_HOST] = node_ip
        env[ENV_RAY_NODE_ID] = node_id  # for the deployment's own code: which node it runs on
        # Exactly the GPUs Ray gave this actor: none when it asked for none.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        env.update(self._write_tls(home, worker_id, launch.get("tls")))
        if (pythonpath := package_pythonpath(env)) is not None:
            env["PYTHONPATH"] = pythonpath
        argv = [*(launch["argv_prefix"] or [*module_argv("vastrpc"), "worker"])]
        argv += ["--control", launch["control_address"], "--worker-id", worker_id, "--token-stdin"]
        with self._log_path.open("ab") as out:
            log_start = out.tell()  # where this launch's lines begin (a restart appends)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            where = f"Ray node {node_ip} ({node_id[:12]}), GPUs [{','.join(gpu_ids)}]"
            out.write(f"[vastrpc {stamp}] starting worker {worker_id} on {where}: {' '.join(argv)}\n".encode())
            out.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        # The token on the agent's stdin, never in its environment (/proc/<pid>/environ).
        assert self._proc.stdin is not None
        self._proc.stdin.write(launch["token"].encode() + b"\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self._proc.stdin.drain()
        self._proc.stdin.close()
        self._exited = asyncio.ensure_future(self._reap(self._proc))
        marker = launch.get("marker") or ""
        return {
            "pid": self._proc.pid,
            "node_id": node_id,
            "node_ip": node_ip,
            "gpu_ids": gpu_ids,
            "log_start": log_start,
            # The control service reads this log itself when the node shares its files.
            "shared_files": bool(marker) and Path(marker).exists(),
        }

    def _write_tls(self, home: Path, worker_id: str, tls: Mapping[str, Any] | None) -> dict[str, str]:
        """The control service's TLS files, written on this node for the agent; their ``VASTRPC_TLS_*``."""
        if not tls:
            return {}
        folder = home / "ray-worker-tls" / worker_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._tls_dir = folder
        env = {}
        for key, name in (("ca", ENV_TLS_CA), ("cert", ENV_TLS_CERT), ("key", ENV_TLS_KEY)):
            if tls.get(key) is not None:
                path = folder / f"{key}.pem"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(tls[key])
                env[name] = str(path)
        if tls.get("require_client_cert"):
            env[ENV_TLS_REQUIRE_CLIENT_CERT] = "1"
        return env

    async def _reap(self, proc: asyncio.subprocess.Process) -> int:
        returncode = await proc.wait()
        # Whatever the agent left in its process group (a serving process) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
        return returncode

    async def wait(self) -> int:
        """The agent's exit code, once it has exited."""
        assert self._exited is not None
        return await asyncio.shield(self._exited)

    async def stop(self, grace: float) -> int:
        """SIGTERM the agent's process group, SIGKILL it after ``grace`` seconds; returns its exit code."""
        if self._proc is None or self._exited is None:
            return 0
        if not self._exited.done():
            _signal_group(self._proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout=grace)
            except TimeoutError:
                _signal_group(self._proc.pid, signal.SIGKILL)
        return await asyncio.shield(self._exited)

    async def read_log(self, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of the worker's log from ``offset``."""
        if self._log_path is None:
            return b""
        try:
            with self._log_path.open("rb") as f:
                f.seek(offset)
                return f.read(limit)
        except OSError:
            return b""


def _parent_death_signal() -> Callable[[], None] | None:
    """What the agent runs before exec so that it gets SIGTERM (drains, exits) when the actor's process dies.

    Linux only (None elsewhere). prctl is looked up here, before the fork: the child of a
    threaded process must not load libraries.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_signal


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class _Worker:
    actor: Any
    pid: int = 0
    node_ip: str = ""
    running: bool = True
    mirror: bool = False
    # How far the worker's log on its node has been copied here (when it is mirrored).
    log_offset: int = 0
    watcher: asyncio.Task[None] | None = None


class RayProvider:
    """Places each worker as a Ray actor on the cluster at ``address`` (see the module docstring).

    Args:
        address: The cluster's GCS address, ``host:port`` (what ``ray start --head`` prints).
        home: The vastrpc home: worker logs go to ``home/logs/workers/<worker_id>.log``, and
            workers use the same path on their nodes for their caches. A node that does not
            share this machine's files has its workers' logs copied here as they grow.
        control_host: The interface the control service listens on. When it listens on all
            of them, workers reach it at this machine's address in the cluster.
        argv_prefix: The command before ``--control ADDR --worker-id ID`` on a node (default
            ``python -m vastrpc worker`` with the node's Python).
        worker_tls: The control service's TLS files; their contents travel to each worker.
        on_exit: See Provider.
        placement_timeout: Seconds a worker may wait for a node with free resources.

    Raises:
        DefinitionError: Ray is not installed (``pip install 'vastrpc[ray]'``).
    """

    @classmethod
    def from_config(cls, config: ControlConfig, *, worker_command: Sequence[str] | None = None) -> RayProvider:
        """Workers on the cluster at ``config.ray_address``, which is required."""
        if not config.ray_address:
            raise DefinitionError(
                "--provider ray needs --ray-address HOST:PORT: the address `ray start --head` printed"
            )
        return cls(
            config.ray_address,
            Path(config.home),
            control_host=config.host,
            argv_prefix=worker_command,
            worker_tls=config.tls,
        )

    def __init__(
        self,
        address: str,
        home: Path,
        *,
        control_host: str = "127.0.0.1",
        argv_prefix: Sequence[str] | None = None,
        worker_tls: TlsFiles | None = None,
        on_exit: ExitCallback | None = None,
        placement_timeout: float = 30.0,
    ) -> None:
        if importlib.util.find_spec("ray") is None:
            raise DefinitionError("--provider ray needs Ray on this machine: pip install 'vastrpc[ray]'")
        self.address = address
        self.home = Path(home)
        self.control_host = control_host
        self.argv_prefix = list(argv_prefix) if argv_prefix else None
        self.worker_tls = worker_tls
        self.on_exit = on_exit
        self.placement_timeout = placement_timeout
        self.log_dir = self.home / "logs" / "workers"
        self._workers: dict[str, _Worker] = {}
        self._connected = False
        self._connect_lock = asyncio.Lock()
        self._actor_class: Any = None
        self._node_ip = ""
        self._marker = self.log_dir / f".ray-files-{uuid.uuid4().hex[:12]}"
        self._checked_hosts: set[str] = set()

    def isolation_warnings(self) -> list[str]:
        """Ray runs every worker as the user who started each node's Ray, with this home's path for its files."""
        return [
            "the Ray provider runs workers as processes of the user who started Ray on each node, with their files "
            f"under {self.home} there: a deployment's code can read that user's files (on this machine, this "
            "service's home when Ray runs as its user) and reach the other deployments' workers on the node; "
            "run Ray as another user than this service, or use --provider podman"
        ]

    def log_path(self, worker_id: str) -> Path:
        """Where the worker's output is read here."""
        return self.log_dir / f"{worker_id}.log"

    def is_running(self, worker_id: str) -> bool:
        """Whether that worker's actor is being placed or runs its agent."""
        worker = self._workers.get(worker_id)
        return worker is not None and worker.running

    def worker_gpus(self, worker_id: str) -> tuple[int, ...]:
        """Nothing: Ray chooses a worker's GPUs on its node (``CUDA_VISIBLE_DEVICES``); not tracked here."""
        return ()

    def adopt_worker(self, worker_id: str, pid: int, gpus: Iterable[int]) -> None:
        """Nothing: Ray keeps an actor's GPUs for as long as it lives."""

    # -- the cluster ----------------------------------------------------------------------

    async def _connect(self) -> None:
        async with self._connect_lock:
            if self._connected:
                return
            try:
                await asyncio.to_thread(self._init)
            except Exception as exc:
                raise DeploymentError(
                    f"cannot join the Ray cluster at {self.address}: {exc}; check --ray-address and that "
                    "this machine runs the same Ray version as the cluster",
                    step="placement",
                ) from None
            self._connected = True

    def _init(self) -> None:
        import ray

        ray.init(
            address=self.address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
            ignore_reinit_error=True,
        )
        self._actor_class = ray.remote(WorkerHost)
        self._node_ip = ray.util.get_node_ip_address()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._marker.touch()
        log.info("joined the Ray cluster at %s as a driver (this node %s)", self.address, self._node_ip)
        if self.control_host in _LOOPBACK and any(n.address != self._node_ip for n in self._nodes()):
            log.warning(
                "the control service listens on %s only: workers on other machines cannot reach it; "
                "start it with --host 0.0.0.0 (and TLS)",
                self.control_host,
            )

    def _nodes(self) -> list[NodeInfo]:
        import ray

        return [NodeInfo.from_ray(n) for n in ray.nodes() if n.get("Alive")]

    def _worker_control_address(self, control_address: str) -> str:
        """Where workers dial the control service (and its peers, comma-separated): this machine's
        cluster address for a service that listens on all interfaces."""
        return ",".join(self._dialable(address) for address in control_address.split(","))

    def _dialable(self, address: str) -> str:
        host, _, port = address.rpartition(":")
        if self.control_host in _WILDCARD and host in _LOOPBACK and self._node_ip:
            return f"{self._node_ip}:{port}"
        return address

    # -- workers --------------------------------------------------------------------------

    async def requirement_warnings(self, requirements: Sequence[Query]) -> list[str]:
        """The requirements no node can be checked for (Vast's marketplace's columns): placed without them.

        Unmet ones are no warning here: they fail the worker's placement.
        """
        return [
            f"not applicable on a Ray cluster, so not checked: {q} ({q.column} is Vast's marketplace's to know)"
            for q in Placement.from_queries(requirements).not_applicable
        ]

    async def image_warnings(self, image: control_pb2.ImageSpec) -> list[str]:
        """What workers on Ray nodes do instead of the image, its copies, Python and ports (``vastrpc._hostimage``).

        The image itself is not run: workers are processes on each node's Python (Ray's own
        container support is not used), and the deploy says so rather than ignoring it.
        """
        notes = []
        if image.from_image:
            notes.append(
                f"image {image.from_image!r} is not run: the Ray provider runs workers as processes on each "
                "node's own Python, which must have what the image would (packages, CUDA); to run the image, "
                "use a container provider (control serve --provider podman or docker)"
            )
        return notes + image_warnings(
            image, provider="the Ray provider runs workers as processes on each node's host", environ=None
        )

    async def start_worker(
        self, worker_id: str, token: str, control_address: str, *, requirements: Sequence[Query] | None = None
    ) -> int:
        """Place the worker's actor and launch its agent; returns the agent's pid on its node.

        Raises:
            DeploymentError: (step ``placement``) no node could ever meet the requirements, none
                had free resources within ``placement_timeout``, or the cluster is unreachable;
                (step ``starting``) the agent could not be launched on its node.
        """
        import ray

        await self._connect()
        placement = Placement.from_queries(requirements or ())
        nodes = await asyncio.to_thread(self._nodes)
        problem = placement.unmet(nodes)
        if problem is not None:
            raise DeploymentError(problem, step="placement")
        name = f"vastrpc-{worker_id}-{uuid.uuid4().hex[:6]}"
        actor = self._actor_class.options(name=name, **placement.ray_options(nodes)).remote()
        worker = self._workers[worker_id] = _Worker(actor)
        launch = {
            "worker_id": worker_id,
            "home": str(self.home),
            "argv_prefix": self.argv_prefix,
            "control_address": self._worker_control_address(control_address),
            "env": {"PYTHONUNBUFFERED": "1"},
            "token": token,
            "tls": self._tls_contents(),
            "marker": str(self._marker),
        }
        try:
            info = await asyncio.wait_for(_result(actor.start.remote(launch)), self.placement_timeout)
        except TimeoutError:
            self._forget(worker_id, worker)
            raise DeploymentError(
                f"no node of the Ray cluster had free resources for {placement.describe()} "
                f"within {self.placement_timeout:g}s (the nodes that meet it are busy): "
                "stop other workers or add nodes, then deploy again",
                step="placement",
            ) from None
        except ray.exceptions.RayError as exc:
            if not worker.running:
                return 0  # stopped while it was being placed
            self._forget(worker_id, worker)
            raise DeploymentError(f"the worker's Ray actor could not start its agent: {exc}", step="starting") from None
        worker.pid, worker.node_ip = int(info["pid"]), str(info["node_ip"])
        if not worker.running:
            return worker.pid  # stopped meanwhile: its actor is gone, and the agent with it
        worker.mirror, worker.log_offset = not info["shared_files"], int(info["log_start"])
        self._check_certificate(worker.node_ip)
        worker.watcher = asyncio.create_task(self._watch(worker_id, worker), name=f"watch-{worker_id}")
        log.info(
            "started worker %s on Ray node %s (%s), GPUs [%s], agent pid %d",
            worker_id,
            worker.node_ip,
            str(info["node_id"])[:12],
            ",".join(info["gpu_ids"]),
            worker.pid,
        )
        return worker.pid

    def _check_certificate(self, node_ip: str) -> None:
        """Warn once per node when the worker certificate does not name the address clients dial there."""
        tls = self.worker_tls
        if tls is None or tls.cert_file is None or node_ip in self._checked_hosts:
            return
        self._checked_hosts.add(node_ip)
        client = tls.require_client_cert
        for problem in certificate_problems(tls.cert_file, client=client, hosts=[node_ip]):
            log.warning("workers on Ray node %s serve with %s, but %s", node_ip, tls.cert_file, problem)

    def _tls_contents(self) -> dict[str, Any] | None:
        tls = self.worker_tls
        if tls is None:
            return None
        files = {"ca": tls.ca_file, "cert": tls.cert_file, "key": tls.key_file}
        out: dict[str, Any] = {key: path.read_bytes() if path else None for key, path in files.items()}
        out["require_client_cert"] = tls.require_client_cert
        return out

    def _forget(self, worker_id: str, worker: _Worker) -> None:
        import ray

        worker.running = False
        if self._workers.get(worker_id) is worker:
            del self._workers[worker_id]
        with contextlib.suppress(Exception):
            ray.kill(worker.actor, no_restart=True)

    async def _watch(self, worker_id: str, worker: _Worker) -> None:
        mirror = asyncio.create_task(self._mirror(worker_id, worker)) if worker.mirror else None
        try:
            returncode = int(await _result(worker.actor.wait.remote()))
        except Exception as exc:
            # The actor died with its node, or was killed: its agent went with it.
            log.warning("worker %s: its Ray actor died (%s)", worker_id, type(exc).__name__)
            returncode = -signal.SIGKILL
        if mirror is not None:
            mirror.cancel()
            await asyncio.gather(mirror, return_exceptions=True)
            await self._mirror_once(worker_id, worker)
        self._forget(worker_id, worker)
        log.info("worker %s (pid %d on %s) exited with code %d", worker_id, worker.pid, worker.node_ip, returncode)
        if self.on_exit is None:
            return
        try:
            result = self.on_exit(worker_id, worker.pid, returncode)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("handling the exit of worker %s failed", worker_id)

    async def _mirror(self, worker_id: str, worker: _Worker) -> None:
        """Copy the log of a worker on a node without this machine's files here, as it grows."""
        while True:
            await self._mirror_once(worker_id, worker)
            await asyncio.sleep(_MIRROR_INTERVAL)

    async def _mirror_once(self, worker_id: str, worker: _Worker) -> None:
        """Copy what the worker's log on its node gained since the last copy."""
        path = self.log_path(worker_id)
        while True:
            try:
                data = await asyncio.wait_for(_result(worker.actor.read_log.remote(worker.log_offset, 1 << 20)), 10)
            except Exception:
                return  # the actor is gone: what was copied is what there is
            if not data:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                f.write(data)
            worker.log_offset += len(data)

    async def stop_worker(self, worker_id: str, grace: float, *, pid: int = 0) -> bool:
        """Ask the actor to stop the agent (SIGTERM, SIGKILL after ``grace``), then end the actor.

        ``pid`` is ignored: a worker this provider did not start belongs to an earlier control
        service, and its actor ended with it. Returns False when nothing was running.
        """
        worker = self._workers.get(worker_id)
        if worker is None or not worker.running:
            return False
        if worker.watcher is None:
            self._forget(worker_id, worker)  # still being placed: start_worker sees it was stopped
            return True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_result(worker.actor.stop.remote(grace)), grace + 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(worker.watcher), 15)
        self._forget(worker_id, worker)
        return True

    async def stop_all(self, grace: float) -> None:
        """Stop every worker at once, then wait for their exit callbacks."""
        watchers = [w.watcher for w in self._workers.values() if w.watcher is not None]
        await asyncio.gather(*(self.stop_worker(wid, grace) for wid in list(self._workers)))
        if watchers:
            await asyncio.wait(watchers, timeout=grace)
        with contextlib.suppress(OSError):
            self._marker.unlink()


async def _result(ref: Any) -> Any:
    """The value of a Ray ObjectRef, awaited on this event loop without holding a thread."""
    return await asyncio.wrap_future(ref.future())
