"""The local process provider: each worker is a process on this host (the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vastrpc._files import open_private_log, private_folder
from vastrpc._hostimage import image_warnings
from vastrpc._process import module_argv, package_pythonpath, pid_alive
from vastrpc._tls import TlsFiles
from vastrpc._workerenv import ENV_SPARE_SERVING, inherited_environ
from vastrpc.api.v1 import control_pb2
from vastrpc.config import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_REQUIRE_CLIENT_CERT, ControlConfig
from vastrpc.control.providers.base import ENV_HOME, ExitCallback
from vastrpc.control.providers.gpus import GpuPlacementError, GpuSlots, visible_devices
from vastrpc.control.providers.inventory import Inventory, probe_machine
from vastrpc.control.providers.requirements import evaluate
from vastrpc.control.providers.workeruser import WorkerUser, choose_worker_user
from vastrpc.query import Query

__all__ = ["LocalProcessProvider"]

log = logging.getLogger(__name__)


class LocalProcessProvider:
    """Runs each worker as ``python -m vastrpc worker ...`` in its own session on this host.

    Args:
        home: The vastrpc home; logs go to ``home/logs/workers/<worker_id>.log``.
        argv_prefix: The command before ``--control ADDR --worker-id ID --token-stdin``; tests
            swap in a fake worker. Defaults to ``[sys.executable, "-P", "-m", "vastrpc", "worker"]``.
        environ: The environment workers take the allow-listed variables of
            (``vastrpc._workerenv.INHERITED``; default: this process's). Nothing else of it
            reaches a worker: not the caller's or the service's credentials, not ``VASTRPC_HOME``.
        agent_env: Variables every agent gets besides (a container provider's engine).
        on_exit: See Provider.
        worker_tls: The control service's TLS files, handed to each worker through
            ``VASTRPC_TLS_*``: the worker trusts ``ca_file`` for the control service, serves
            calls with ``cert_file`` and ``key_file`` and presents them under mutual TLS.
            None: workers speak plaintext.
        inventory: What this machine offers, against which requirements are evaluated; None
            probes it once, at the first worker with requirements (CPUs, RAM, free disk under
            ``home``, GPUs through NVML or nvidia-smi).
        worker_user: Run workers as this user (``workeruser.WorkerUser``), their files in its
            folder; None runs them as this process's user, their files under ``home``.
        isolation_warnings: What ``control serve`` says at its start about how far workers
            are isolated from it and from each other (``isolation_warnings()``).
        spare: Keep a spare agent ready (``vastrpc.serve.spare``): started as a worker is, it
            has imported vastrpc and started its serving process before a worker is wanted,
            and becomes the next worker's agent. None: on with the default ``argv_prefix``.
        spare_delay: Seconds after a spare is taken before the next one starts (it would
            compete for the CPUs with the worker it just became).

    The worker's token goes to the agent on its stdin, never in its environment (which
    ``/proc/<pid>/environ`` shows to the user's other processes).

    GPUs: a worker of a deployment with requirements gets GPUs of its own (``GpuSlots``:
    its ``num_gpus``, GPUs meeting its per-GPU queries, never one another worker holds) in
    ``CUDA_VISIBLE_DEVICES`` and ``NVIDIA_VISIBLE_DEVICES`` (empty: none), and its
    requirements are evaluated against those GPUs. When the machine's GPUs could meet them
    but other workers hold them, ``start_worker`` raises ``GpuPlacementError`` (step
    ``placement``). A deployment without requirements, and any worker on a machine without
    GPUs, keeps the environment as it is (every GPU visible, none held). GPUs are given back
    when the worker's process ends; restarted in its slot (same worker id), it gets the same
    ones back when they are still free.
    """

    # Workers are processes of this host (see Provider).
    remote_workers = False

    @classmethod
    def from_config(cls, config: ControlConfig, *, worker_command: Sequence[str] | None = None) -> LocalProcessProvider:
        """Workers under the service's home; ``worker_command`` replaces ``argv_prefix`` (tests' fake workers).

        Raises:
            InventoryError: ``config.inventory_file`` cannot be read.
        """
        inventory = Inventory.load(config.inventory_file) if config.inventory_file is not None else None
        environ = dict(os.environ)
        user, warnings = choose_worker_user(config.worker_user, python=sys.executable, environ=_with_package(environ))
        tls = config.tls
        if user is not None and tls is not None:
            tls = user.copy_tls(tls, Path(config.home))
        return cls(
            Path(config.home),
            argv_prefix=worker_command,
            environ=environ,
            worker_tls=tls,
            inventory=inventory,
            worker_user=user,
            isolation_warnings=warnings,
            spare=None if config.spare_agent else False,
            # Off, the agents start no serving process ahead for their next revision either.
            agent_env=None if config.spare_agent else {ENV_SPARE_SERVING: "0"},
        )

    def __init__(
        self,
        home: Path,
        *,
        argv_prefix: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        on_exit: ExitCallback | None = None,
        worker_tls: TlsFiles | None = None,
        inventory: Inventory | None = None,
        agent_env: Mapping[str, str] | None = None,
        worker_user: WorkerUser | None = None,
        isolation_warnings: Sequence[str] = (),
        spare: bool | None = None,
        spare_delay: float = 1.0,
    ) -> None:
        self.home = Path(home)
        self._inventory = inventory
        self.worker_tls = worker_tls
        self.argv_prefix = list(argv_prefix) if argv_prefix else [*module_argv("vastrpc"), "worker"]
        self._environ = dict(os.environ if environ is None else environ)
        self._agent_env = dict(agent_env or {})
        self.worker_user = worker_user
        self._isolation_warnings = list(isolation_warnings)
        # The agents' VASTRPC_HOME (bundles, pip environments): the worker user's own folder, never this home.
        self.worker_home = worker_user.root if worker_user is not None else self.home
        self.on_exit = on_exit
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self.log_dir = self.home / "logs" / "workers"
        self._slots: GpuSlots | None = None
        # Workers of an earlier control service (not our children) holding GPUs: worker -> (pid, GPUs).
        self._adopted: dict[str, tuple[int, tuple[int, ...]]] = {}
        # A spare agent (vastrpc.serve.spare) when on: by default with the default command only.
        self._spares_on = argv_prefix is None if spare is None else spare
        self._spare_delay = spare_delay
        self._spare: _Spare | None = None
        self._spare_task: asyncio.Task[None] | None = None
        self._closed = False

    def log_path(self, worker_id: str) -> Path:
        """Where the worker's stdout and stderr go."""
        return self.log_dir / f"{worker_id}.log"

    def isolation_warnings(self) -> list[str]:
        """How workers here are not isolated from this service and each other; empty when they run as their own user."""
        return list(self._isolation_warnings)

    def is_running(self, worker_id: str) -> bool:
        """Whether that worker's process is running."""
        proc = self._procs.get(worker_id)
        return proc is not None and proc.returncode is None

    async def inventory(self) -> Inventory:
        """What this machine offers: the declared inventory, else probed once (off the event loop)."""
        if self._inventory is None:
            self._inventory = await asyncio.to_thread(probe_machine, self.home)
            log.info("this machine's inventory: %s", self._inventory)
        return self._inventory

    async def gpu_slots(self) -> GpuSlots:
        """Which of this machine's GPUs each worker holds (from the inventory, once)."""
        if self._slots is None:
            inventory = await self.inventory()
            if self._slots is None:
                self._slots = GpuSlots(inventory.gpus)
                for worker_id, (_, gpus) in self._adopted.items():
                    self._slots.adopt(worker_id, gpus)
        return self._slots

    def worker_gpus(self, worker_id: str) -> tuple[int, ...]:
        """The indices of the GPUs the worker holds on this machine; empty when none."""
        return self._slots.held(worker_id) if self._slots is not None else ()

    def adopt_worker(self, worker_id: str, pid: int, gpus: Iterable[int]) -> None:
        """A worker of an earlier control service still runs with ``gpus``: no other worker gets them.

        They are given back when it is stopped through ``stop_worker``, or found gone (its
        ``pid`` no longer alive) when another worker needs GPUs.
        """
        gpus = tuple(gpus)
        if not gpus:
            return
        self._adopted[worker_id] = (pid, gpus)
        if self._slots is not None:
            self._slots.adopt(worker_id, gpus)

    async def requirement_warnings(self, requirements: Sequence[Query]) -> list[str]:
        """Each query a worker here would not meet (it runs anyway), then each not applicable.

        Evaluated against the GPUs a worker would get on this machine with no other worker.
        """
        unmet, not_applicable = await self._requirement_notes(requirements, await self._gpus_alone(requirements))
        return unmet + not_applicable

    async def _gpus_alone(self, requirements: Sequence[Query]) -> tuple[int, ...] | None:
        """The GPUs a worker with ``requirements`` would get on this machine alone; None: not decided by GPUs."""
        gpus = (await self.inventory()).gpus if requirements else ()
        if not gpus:
            return None
        try:
            return GpuSlots(gpus).take("-", requirements)
        except GpuPlacementError:
            return None

    async def _requirement_notes(
        self, requirements: Sequence[Query], gpus: tuple[int, ...] | None = None
    ) -> tuple[list[str], list[str]]:
        """(the unmet queries, the not applicable ones), each in words; against ``gpus`` when given."""
        if not requirements:
            return [], []
        inventory = await self.inventory()
        if gpus is not None:
            inventory = replace(inventory, gpus=tuple(inventory.gpus[i] for i in gpus))
        evaluation = evaluate(requirements, inventory)
        unmet = [f"requirement not met on this machine, running anyway: {o.reason()}" for o in evaluation.unmet]
        return unmet, [f"requirement not checked: {o.reason()}" for o in evaluation.not_applicable]

    async def image_warnings(self, image: control_pb2.ImageSpec) -> list[str]:
        """What workers here do instead of the image's copies, Python and ports (see ``vastrpc._hostimage``).

        ``Image.venv`` is checked on this machine, with the environment workers get.
        """
        return await asyncio.to_thread(
            image_warnings,
            image,
            provider="the local provider runs workers as processes on this host",
            environ=self._worker_environ(),
        )

    def _worker_environ(self) -> dict[str, str]:
        """The environment a worker starts with, TLS files aside: the allow-list, the agent's own, vastrpc's path."""
        env = inherited_environ(self._environ)
        env.update(self._agent_env)
        if self.worker_user is not None:
            env.update(self.worker_user.environ())
        env[ENV_HOME] = str(self.worker_home)
        env["PYTHONUNBUFFERED"] = "1"
        return _with_package(env)

    async def start_worker(
        self, worker_id: str, token: str, control_address: str, *, requirements: Sequence[Query] | None = None
    ) -> int:
        """Spawn the worker agent in a new session, its output appended to its log file; returns its pid.

        Every worker runs on this machine: ``requirements`` it does not meet (with the GPUs
        it gets) are logged as a WARNING (in the control service's log and at the top of the
        worker's log), the ones no provider can check at INFO.

        Raises:
            GpuPlacementError: This machine's GPUs could meet ``requirements`` but too few
                are free; the message names the query and the workers holding them.
        """
        private_folder(self.log_dir.parent)
        private_folder(self.log_dir)  # what workers print may hold anything: this user's alone
        gpus = await self._take_gpus(worker_id, requirements or ())
        try:
            return await self._spawn(worker_id, token, control_address, requirements or (), gpus)
        except BaseException:
            if self._slots is not None and not self.is_running(worker_id):
                self._slots.give_back(worker_id)
            raise

    async def _take_gpus(self, worker_id: str, requirements: Sequence[Query]) -> tuple[int, ...] | None:
        """The GPUs the worker gets; None when the environment keeps every GPU visible (no requirement, no GPU)."""
        if not requirements or not (await self.inventory()).gpus:
            return None
        slots = await self.gpu_slots()
        for adopted, (pid, _) in list(self._adopted.items()):
            if not pid_alive(pid):  # gone while this service was not watching it
                del self._adopted[adopted]
                slots.forget(adopted)
        gpus = slots.take(worker_id, requirements)
        log.info("worker %s holds GPU(s) %s", worker_id, visible_devices(gpus) or "none")
        return gpus

    async def _spawn(
        self,
        worker_id: str,
        token: str,
        control_address: str,
        requirements: Sequence[Query],
        gpus: tuple[int, ...] | None,
    ) -> int:
        unmet, not_applicable = await self._requirement_notes(requirements, gpus)
        for note in unmet:
            log.warning("worker %s: %s", worker_id, note)
        for note in not_applicable:
            log.info("worker %s: %s", worker_id, note)
        notes = unmet + not_applicable
        argv = [*self.argv_prefix, "--control", control_address, "--worker-id", worker_id, "--token-stdin"]
        env = self._worker_environ()
        env.update(self._tls_env())
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible_devices(gpus)
            env["NVIDIA_VISIBLE_DEVICES"] = visible_devices(gpus) or "none"
            notes.insert(0, f"GPUs: CUDA_VISIBLE_DEVICES={visible_devices(gpus)!r}")
        spare = self._take_spare(worker_id)
        if spare is not None:
            proc = await self._assign(spare, worker_id, token, control_address, env, notes)
        else:
            with open_private_log(self.log_path(worker_id)) as out:
                _write_notes(out, [f"starting worker {worker_id}: {' '.join(argv)}", *notes])
                proc = await self._start_agent(argv, env, out)
            await _send_line(proc, token)  # the token, for --token-stdin
        self._spare_later(self._spare_delay)
        self._procs[worker_id] = proc
        task = asyncio.create_task(self._watch(worker_id, proc), name=f"watch-{worker_id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        log.info("started worker %s (pid %d)", worker_id, proc.pid)
        return proc.pid

    async def _start_agent(self, argv: list[str], env: dict[str, str], out: Any) -> asyncio.subprocess.Process:
        """``argv`` as the worker user, stdin a pipe, its output to ``out``, in a session of its own.

        A session of its own: stopping the worker signals its whole process group, and a
        Ctrl-C meant for the control service's terminal does not reach it directly.
        """
        command, options = self._as_worker_user(argv)
        return await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **options,
        )

    def prestart(self) -> None:
        """Start the spare agent now (at the service's start), so that even the first worker finds one."""
        self._spare_later(0.0)

    def _spare_later(self, delay: float) -> None:
        """Start a spare agent after ``delay`` seconds unless there is one, or one is on its way."""
        if not self._spares_on or self._closed or (self._spare_task is not None and not self._spare_task.done()):
            return

        async def start() -> None:
            await asyncio.sleep(delay)
            if self._spare is None and not self._closed:
                self._spare = await self._start_spare()

        self._spare_task = asyncio.get_running_loop().create_task(start(), name="vastrpc-spare-agent")
        self._spare_task.add_done_callback(_log_failure)

    async def _start_spare(self) -> _Spare:
        private_folder(self.log_dir.parent)
        private_folder(self.log_dir)
        path = self.log_dir / f"spare-{uuid.uuid4().hex[:12]}.log"
        argv = module_argv("vastrpc.serve.spare")
        env = self._worker_environ()
        env.update(self._tls_env())
        with open_private_log(path) as out:
            _write_notes(out, [f"spare agent: {' '.join(argv)}"])
            proc = await self._start_agent(argv, env, out)
        log.debug("started a spare agent (pid %d)", proc.pid)
        return _Spare(proc, path)

    def _take_spare(self, worker_id: str) -> _Spare | None:
        """The spare agent, now the worker's; None when there is none alive, or the worker has a log to keep."""
        spare = self._spare
        if spare is None or self.log_path(worker_id).exists():  # restarted in its slot: its log goes on
            return None
        self._spare = None
        if spare.proc.returncode is not None:
            log.warning("the spare agent exited with code %d (its output: %s)", spare.proc.returncode, spare.log)
            return None
        return spare

    async def _assign(
        self, spare: _Spare, worker_id: str, token: str, control_address: str, env: dict[str, str], notes: list[str]
    ) -> asyncio.subprocess.Process:
        """Make the spare agent worker ``worker_id``: its log becomes the worker's, the assignment goes on its stdin."""
        spare.log.rename(self.log_path(worker_id))
        with open_private_log(self.log_path(worker_id)) as out:
            _write_notes(out, [f"starting worker {worker_id}: the spare agent (pid {spare.proc.pid}) takes it", *notes])
        assignment = {"control": control_address, "worker_id": worker_id, "token": token, "env": env}
        await _send_line(spare.proc, json.dumps(assignment))
        return spare.proc

    def _as_worker_user(self, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
        """``argv`` and the keyword arguments that start it as the worker user (unchanged: as this process's user)."""
        user = self.worker_user
        if user is None:
            return argv, {}
        # In its own home: this service's working directory may be closed to it.
        return user.command(argv), {"cwd": user.home}

    def _tls_env(self) -> dict[str, str]:
        # Only the service's own TLS reaches a worker (ENV_TLS are never inherited).
        tls = self.worker_tls
        if tls is None:
            return {}
        files = {ENV_TLS_CA: tls.ca_file, ENV_TLS_CERT: tls.cert_file, ENV_TLS_KEY: tls.key_file}
        out = {name: str(path) for name, path in files.items() if path is not None}
        if tls.require_client_cert:
            out[ENV_TLS_REQUIRE_CLIENT_CERT] = "1"
        return out

    async def _watch(self, worker_id: str, proc: asyncio.subprocess.Process) -> None:
        returncode = await proc.wait()
        # Whatever the agent left in its process group (a serving process) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._procs.get(worker_id) is proc:
            del self._procs[worker_id]
            if self._slots is not None:  # not restarted in its slot meanwhile: its GPUs are free
                self._slots.give_back(worker_id)
        log.info("worker %s (pid %d) exited with code %d", worker_id, proc.pid, returncode)
        if self.on_exit is None:
            return
        try:
            result = self.on_exit(worker_id, proc.pid, returncode)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("handling the exit of worker %s failed", worker_id)

    async def stop_worker(self, worker_id: str, grace: float, *, pid: int = 0) -> bool:
        """SIGTERM the worker's process group, SIGKILL it after ``grace`` seconds.

        ``pid`` stops a worker this provider did not start (one left by an earlier
        control service process). Returns False when nothing was running.
        """
        proc = self._procs.get(worker_id)
        if proc is None:
            stopped = await self._stop_foreign(pid, grace) if pid else False
            if self._adopted.pop(worker_id, None) is not None and self._slots is not None:
                self._slots.forget(worker_id)
            return stopped
        if proc.returncode is not None:
            return False
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(proc.wait())
        except TimeoutError:
            log.warning("worker %s did not stop within %gs; killing it", worker_id, grace)
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        return True

    async def _stop_foreign(self, pid: int, grace: float) -> bool:
        # Only a process that leads its own group is one we started (start_new_session);
        # anything else is a recycled pid and must not be touched.
        try:
            if os.getpgid(pid) != pid:
                return False
        except ProcessLookupError:
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                _signal_group(pid, signal.SIGKILL)
                break
            await asyncio.sleep(0.05)
        return True

    async def stop_all(self, grace: float) -> None:
        """Stop the spare agent and every running worker at once, then wait for the exit callbacks to finish."""
        self._closed = True
        if self._spare_task is not None:
            self._spare_task.cancel()
            await asyncio.gather(self._spare_task, return_exceptions=True)
        if (spare := self._spare) is not None:
            self._spare = None
            _signal_group(spare.proc.pid, signal.SIGKILL)
            await spare.proc.wait()
            spare.log.unlink(missing_ok=True)
        await asyncio.gather(*(self.stop_worker(wid, grace) for wid in list(self._procs)))
        if self._watchers:
            await asyncio.wait(list(self._watchers), timeout=grace)


def _with_package(env: dict[str, str]) -> dict[str, str]:
    """``env`` with a PYTHONPATH that finds this vastrpc when it is not installed (a checkout)."""
    if (pythonpath := package_pythonpath(env)) is not None:
        env["PYTHONPATH"] = pythonpath
    return env


@dataclass(frozen=True)
class _Spare:
    """A spare agent waiting for its worker, and the log it writes to until then."""

    proc: asyncio.subprocess.Process
    log: Path


def _write_notes(out: Any, notes: Sequence[str]) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for note in notes:
        out.write(f"[vastrpc {stamp}] {note}\n".encode())
    out.flush()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("could not start a spare agent: %s", exc)


async def _send_line(proc: asyncio.subprocess.Process, line: str) -> None:
    """Write ``line`` to the agent's stdin and close it."""
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    # An agent that exited at once (a bad interpreter) closed the pipe: its exit is reported as usual.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await proc.stdin.drain()
    proc.stdin.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
