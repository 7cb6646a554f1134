"""WorkerHost: the detached Ray actor that holds a worker's resources on its node and runs its agent there.

Detached (owned by the cluster, not by the control service that placed it) and named after its
worker (``actor_name``) in vastrpc's namespace: it outlives that service, and another service
on the same store finds it by name and adopts it (``RayProvider.adopt_worker``). So that none
outlives its use, it ends itself ``linger`` seconds after its agent exits (time for the service
watching it to read the exit code, then end it) and when no ``start`` came within
``UNSTARTED_EXIT`` seconds of its placement (its service died in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vastrpc._process import module_argv, package_pythonpath
from vastrpc._workerenv import inherited_environ
from vastrpc.config import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_REQUIRE_CLIENT_CERT
from vastrpc.control.providers.base import ENV_HOME
from vastrpc.serve.agent import ENV_WORKER_HOST

__all__ = ["ENV_RAY_NODE_ID", "NAMESPACE", "UNSTARTED_EXIT", "WorkerHost", "actor_name"]

log = logging.getLogger(__name__)

# The Ray namespace of every vastrpc actor (and of the control service's driver).
NAMESPACE = "vastrpc"
# The Ray node a worker runs on, in its environment.
ENV_RAY_NODE_ID = "VASTRPC_RAY_NODE_ID"
# Seconds a placed actor waits for its ``start`` before it ends itself.
UNSTARTED_EXIT = 120.0
# Seconds an actor stays after its agent exited, by default.
DEFAULT_LINGER = 30.0
_PR_SET_PDEATHSIG = 1


def actor_name(worker_id: str) -> str:
    """The name of a worker's actor in ``NAMESPACE``: one actor per worker id at a time."""
    return f"vastrpc-{worker_id}"


class WorkerHost:
    """The Ray actor that holds a worker's resources on its node and runs its agent there (see the module)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Future[int] | None = None
        self._log_path: Path | None = None
        self._tls_dir: Path | None = None
        self._where: dict[str, Any] = {}
        self._linger = DEFAULT_LINGER
        self._ending: asyncio.Task[None] | None = None
        # A thread, not a task: no event loop runs for the actor until its first call.
        self._unstarted = threading.Timer(UNSTARTED_EXIT, self._end_if_unstarted)
        self._unstarted.daemon = True
        self._unstarted.start()

    def _end_if_unstarted(self) -> None:
        if self._proc is None:
            _end_this_actor()

    async def start(self, launch: dict[str, Any]) -> dict[str, Any]:
        """Launch the agent as ``launch`` says; returns its pid and where it runs."""
        import ray

        self._unstarted.cancel()
        self._linger = float(launch.get("linger", DEFAULT_LINGER))
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
        self._where = {"node_id": node_id, "node_ip": node_ip, "gpu_ids": gpu_ids, "log_start": log_start}
        return await self.info(launch.get("marker") or "")

    async def info(self, marker: str = "") -> dict[str, Any]:
        """Its agent's pid and where it runs; whether this node has the file ``marker`` (shares the service's files).

        ``running`` says whether the agent still runs; ``log_size`` is how long its log is now.
        """
        size = 0
        with contextlib.suppress(OSError):
            size = self._log_path.stat().st_size if self._log_path is not None else 0
        return {
            **self._where,
            "pid": self._proc.pid if self._proc is not None else 0,
            "running": self._exited is not None and not self._exited.done(),
            "log_size": size,
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
        # Nobody may be watching (its control service died with no peer to adopt it): a detached
        # actor would hold its resources for good. Whoever watches reads the code and ends it first.
        self._ending = asyncio.ensure_future(self._end_after(self._linger))
        return returncode

    async def _end_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        _end_this_actor()

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
                async with asyncio.timeout(grace):
                    await asyncio.shield(self._exited)
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


def _end_this_actor() -> None:
    """End the actor this runs in (its process, its resources, its name)."""
    import ray

    try:
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
    except Exception:  # noqa: BLE001 - the process must go either way
        os._exit(0)
