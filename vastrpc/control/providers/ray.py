"""RayProvider: each worker is a Ray actor on a cluster node that runs the worker agent there as a subprocess.

The control service joins the cluster as a driver (lazily, off its event loop). Each
worker is a detached actor named after it (``ray_host.py``), holding the CPUs, GPUs and
memory the revision's requirements ask for (placement.py beside this module), spread across
the nodes. The actor launches ``python -m vastrpc worker`` on its node with
``CUDA_VISIBLE_DEVICES`` set to the GPUs Ray gave it and ``VASTRPC_WORKER_HOST`` set to the
node's address, which the worker serves calls on and registers with the control service;
clients then call it directly. The actor is the cluster's, not this driver's: it outlives
the control service that placed it, and the service its agent turns to (a ``--peer``)
adopts it by name (``adopt_worker``). Every path that ends a worker (stop, teardown, TTL,
scale-down, failure) ends its actor; one nobody watches ends itself (``ray_host.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import logging
import signal
import socket
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vastrpc._errors import DefinitionError, DeploymentError
from vastrpc._hostimage import image_warnings
from vastrpc._tls import TlsFiles, certificate_problems
from vastrpc._workerenv import ENV_SPARE_SERVING
from vastrpc.api.v1 import control_pb2
from vastrpc.config import ControlConfig
from vastrpc.control.providers.base import ExitCallback
from vastrpc.control.providers.placement import NodeInfo, Placement
from vastrpc.control.providers.ray_host import ENV_RAY_NODE_ID, NAMESPACE, WorkerHost, actor_name
from vastrpc.query import Query

__all__ = ["ENV_RAY_NODE_ID", "RayProvider", "WorkerHost"]

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_WILDCARD = ("", "0.0.0.0", "::", "[::]")
# How often the log of a worker on a node without this machine's files is copied here.
_MIRROR_INTERVAL = 1.0
# Seconds a new actor waits for an earlier one of the same worker (restarted in its slot) to give up its name.
_NAME_RELEASE_TIMEOUT = 15.0


@dataclass
class _Worker:
    # None while an adopted worker's actor is being looked up.
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
        linger: Seconds a worker's actor stays after its agent exited when nobody ends it
            (``ray_host.WorkerHost``).
        spare_serving: Each agent starts its next revision's serving process ahead
            (``vastrpc.serve.standby``); False: ``VASTRPC_SPARE_SERVING=0`` in their environment.

    Raises:
        DefinitionError: Ray is not installed (``pip install 'vastrpc[ray]'``).
    """

    # Workers run on the cluster's nodes and outlive this service (see Provider).
    remote_workers = True

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
            spare_serving=config.spare_agent,
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
        linger: float = 30.0,
        spare_serving: bool = True,
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
        self.linger = linger
        self._agent_env = {} if spare_serving else {ENV_SPARE_SERVING: "0"}
        self.log_dir = self.home / "logs" / "workers"
        self._workers: dict[str, _Worker] = {}
        self._connected = False
        self._connect_lock = asyncio.Lock()
        self._actor_class: Any = None
        self._node_ip = ""
        # A node that sees this file shares this machine's files (its workers' logs need no copying).
        # One per host, never removed: the services of this host on this home, and their peers that
        # adopt their workers, all ask with it.
        self._marker = self.log_dir / f".ray-files-{socket.gethostname()}"
        self._checked_hosts: set[str] = set()
        self._adopting: set[asyncio.Task[None]] = set()

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
        """Watch a worker another control service placed, from now on, as one of this service's own.

        Its actor is looked up by name in the background: from then on its exit is reported
        (``on_exit``), its log copied here when its node does not share this machine's files,
        and ``stop_worker`` ends it. Ray keeps its GPUs for as long as it lives. Nothing when
        this service already watches it.
        """
        if worker_id in self._workers:
            return
        worker = self._workers[worker_id] = _Worker(None, pid=pid)
        self._spawn(self._attach(worker_id, worker))

    async def _attach(self, worker_id: str, worker: _Worker) -> None:
        try:
            actor = await self._find_actor(worker_id)
        except DeploymentError as exc:
            actor = None
            log.warning("cannot adopt worker %s: %s", worker_id, exc)
        if not worker.running:
            return  # stopped while it was looked up: stop_worker ended it by name
        if actor is None:
            # Gone meanwhile (or the cluster is unreachable): its heartbeats' silence decides.
            log.warning("cannot adopt worker %s: its Ray actor %s is gone", worker_id, actor_name(worker_id))
            self._workers.pop(worker_id, None)
            return
        try:
            async with asyncio.timeout(30):
                info = await _result(actor.info.remote(str(self._marker)))
        except Exception as exc:  # noqa: BLE001 - it died meanwhile: its heartbeats' silence decides
            log.warning("cannot adopt worker %s: its Ray actor does not answer (%s)", worker_id, type(exc).__name__)
            self._workers.pop(worker_id, None)
            return
        worker.actor, worker.pid, worker.node_ip = actor, int(info["pid"]) or worker.pid, str(info["node_ip"])
        worker.mirror = not info["shared_files"]
        # A log copied here before (by the service that placed it, sharing this home) goes on from the
        # node's log as it is now; none here yet: from the start of the agent's launch.
        worker.log_offset = int(info["log_size"] if self.log_path(worker_id).exists() else info["log_start"])
        worker.watcher = asyncio.create_task(self._watch(worker_id, worker), name=f"watch-{worker_id}")
        log.info(
            "adopted worker %s: its Ray actor %s on node %s (%s), agent pid %d",
            worker_id,
            actor_name(worker_id),
            worker.node_ip,
            str(info["node_id"])[:12],
            worker.pid,
        )

    async def _find_actor(self, worker_id: str) -> Any:
        """The worker's actor (by its name), None when there is none; DeploymentError: the cluster is unreachable."""
        import ray

        await self._connect()

        def lookup() -> Any:
            try:
                return ray.get_actor(actor_name(worker_id), namespace=NAMESPACE)
            except ValueError:
                return None

        return await asyncio.to_thread(lookup)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

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
        # Detached: the cluster's, so that it outlives this service; its name finds it again.
        options = {"name": actor_name(worker_id), "namespace": NAMESPACE, "lifetime": "detached"}
        try:
            actor = self._actor_class.options(**options, **placement.ray_options(nodes)).remote()
        except ValueError:  # the name is taken: an earlier actor of this worker (restarted in its slot) still ends
            await self._free_name(worker_id)
            actor = self._actor_class.options(**options, **placement.ray_options(nodes)).remote()
        worker = self._workers[worker_id] = _Worker(actor)
        launch = {
            "worker_id": worker_id,
            "home": str(self.home),
            "argv_prefix": self.argv_prefix,
            "control_address": self._worker_control_address(control_address),
            "env": {"PYTHONUNBUFFERED": "1", **self._agent_env},
            "token": token,
            "tls": self._tls_contents(),
            "marker": str(self._marker),
            "linger": self.linger,
        }
        try:
            async with asyncio.timeout(self.placement_timeout):
                info = await _result(actor.start.remote(launch))
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
        reason = ""
        try:
            returncode = int(await _result(worker.actor.wait.remote()))
        except Exception as exc:
            # The actor died with its node, or was killed: its agent went with it. Ray's own
            # words say which, e.g. "The actor died because its node has died."
            log.warning("worker %s: its Ray actor died (%s)", worker_id, type(exc).__name__)
            returncode = -signal.SIGKILL
            reason = _actor_death(exc, worker.node_ip)
        if mirror is not None:
            mirror.cancel()
            await asyncio.gather(mirror, return_exceptions=True)
            await self._mirror_once(worker_id, worker)
        self._forget(worker_id, worker)
        log.info("worker %s (pid %d on %s) exited with code %d", worker_id, worker.pid, worker.node_ip, returncode)
        if self.on_exit is None:
            return
        try:
            result = (
                self.on_exit(worker_id, worker.pid, returncode, reason)
                if reason
                else self.on_exit(worker_id, worker.pid, returncode)
            )
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
                async with asyncio.timeout(10):
                    data = await _result(worker.actor.read_log.remote(worker.log_offset, 1 << 20))
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

        A worker this service neither started nor adopted (another service's, or one of an
        earlier run of this one) is found by its actor's name and stopped the same way.
        ``pid`` is ignored: it is a process of the worker's node. Returns False when nothing
        was running.
        """
        worker = self._workers.get(worker_id)
        if worker is not None and worker.actor is None:
            self._forget(worker_id, worker)  # being adopted: _attach sees it was stopped
            worker = None
        if worker is None:
            return await self._stop_by_name(worker_id, grace)
        if not worker.running:
            return False
        if worker.watcher is None:
            self._forget(worker_id, worker)  # still being placed: start_worker sees it was stopped
            return True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(grace + 10):
                await _result(worker.actor.stop.remote(grace))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15):
                await asyncio.shield(worker.watcher)
        self._forget(worker_id, worker)
        return True

    async def _stop_by_name(self, worker_id: str, grace: float) -> bool:
        import ray

        try:
            actor = await self._find_actor(worker_id)
        except DeploymentError as exc:
            log.warning("cannot stop worker %s: %s", worker_id, exc)
            return False
        if actor is None:
            return False
        with contextlib.suppress(Exception):
            async with asyncio.timeout(grace + 10):
                await _result(actor.stop.remote(grace))
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
        log.info("stopped worker %s through its Ray actor %s", worker_id, actor_name(worker_id))
        return True

    async def _free_name(self, worker_id: str) -> None:
        """End an earlier actor of this worker (restarted in its slot) and wait until its name is free.

        Raises:
            DeploymentError: (step ``placement``) the name is still taken after ``_NAME_RELEASE_TIMEOUT``.
        """
        import ray

        deadline = time.monotonic() + _NAME_RELEASE_TIMEOUT
        while (actor := await self._find_actor(worker_id)) is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"the Ray actor {actor_name(worker_id)} of an earlier start of worker {worker_id} "
                    f"did not end within {_NAME_RELEASE_TIMEOUT:g}s",
                    step="placement",
                )
            await asyncio.sleep(0.2)

    def prestart(self) -> None:
        """Nothing: Ray starts each worker's actor when it is wanted."""

    async def stop_all(self, grace: float) -> None:
        """Stop every worker this service placed or adopted at once, then wait for their exit callbacks."""
        watchers = [w.watcher for w in self._workers.values() if w.watcher is not None]
        await asyncio.gather(*(self.stop_worker(wid, grace) for wid in list(self._workers)))
        if watchers:
            await asyncio.wait(watchers, timeout=grace)


async def _result(ref: Any) -> Any:
    """The value of a Ray ObjectRef, awaited on this event loop without holding a thread."""
    return await asyncio.wrap_future(ref.future())


def _actor_death(exc: BaseException, node_ip: str) -> str:
    """Why a worker's actor died, in Ray's words where it gives them, naming the node."""
    said = next((line.strip() for line in str(exc).splitlines() if "died" in line.lower()), "")
    if "node" in said.lower():
        return f"its Ray node {node_ip} was lost ({said})"
    return f"its Ray actor on node {node_ip} died" + (f" ({said})" if said else "")
