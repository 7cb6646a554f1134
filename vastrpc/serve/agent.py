"""The worker agent: registers, downloads and installs a revision, runs its serving process, and heartbeats.

The agent is the long-lived part of a worker (its id, its caches); each revision runs in
a serving process of its own, so code and packages never mix across revisions. A new
revision of the same environment (tier 2) serves in a new serving process beside the old
one — the one started ahead for it once the old one served (``vastrpc.serve.standby``),
when it can take the revision's environment — switches over once it is ready, then drains
the old one. Clients call the serving process directly; the agent is never a hop on a call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc

from vastrpc._errors import BundleError, DeploymentError, VastrpcError
from vastrpc._grpc import bearer, channel, tls_failure
from vastrpc._hostimage import (
    ENV_COPY_ROOT,
    PORT_PROTOCOL_VALUES,
    HostPort,
    allocate_ports,
    copy_root,
    port_environment,
    python_for,
)
from vastrpc._secrets import unseal
from vastrpc._tls import TlsFiles
from vastrpc._workerenv import ENV_SPARE_SERVING, serving_environ, without_bundle
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc
from vastrpc.serve.container import ContainerEngine
from vastrpc.serve.container_worker import ContainerWorker, Prepared
from vastrpc.serve.download import download_bundle
from vastrpc.serve.filecache import FileCache, endpoint_cache, sweep_caches
from vastrpc.serve.heartbeats import HeartbeatSender, Unanswered
from vastrpc.serve.install import ensure_apt, ensure_pip_env, pip_site, run_startup_commands
from vastrpc.serve.metrics import CallStatsReader
from vastrpc.serve.serving import ServingProcess, prepare
from vastrpc.serve.standby import Standby

log = logging.getLogger("vastrpc.worker")

# The agent gives up on an unreachable control service after this long, so that no
# worker outlives its control service for good.
_CONTROL_LOST_AFTER = 60.0
# The address the worker serves calls on, set by a provider that places it on another machine.
ENV_WORKER_HOST = "VASTRPC_WORKER_HOST"
_STOP_GRACE = 10.0

_STATES = {
    "downloading": common_pb2.WORKER_STATE_DOWNLOADING,
    "pulling": common_pb2.WORKER_STATE_PULLING,
    "installing": common_pb2.WORKER_STATE_INSTALLING,
    "loading": common_pb2.WORKER_STATE_LOADING,
    "benchmarking": common_pb2.WORKER_STATE_BENCHMARKING,
}


def _print(line: str) -> None:
    print(line, flush=True)


class Agent:
    """One worker: brings up the revisions it is assigned and keeps one serving until told to stop."""

    def __init__(
        self,
        control_address: str,
        worker_id: str,
        token: str,
        home: Path,
        bind_host: str = "127.0.0.1",
        tls: TlsFiles | None = None,
        container: ContainerEngine | None = None,
        spare_serving: ServingProcess | None = None,
        standby: bool = True,
    ):
        self.worker_id = worker_id
        # Started by a spare agent before it had a worker (``vastrpc.serve.spare``): the first
        # revision serves in it when its environment is the base one (``fits_spare``).
        self._spare_serving = spare_serving
        # The serving process started while the revision being installed installs (``serving.prepare``).
        self._prepared: ServingProcess | None = None
        # Set by a container provider: each serving process runs in a container of the image.
        self.container = ContainerWorker(container, home, worker_id, bind_host, tls, _print) if container else None
        self.home = home
        self.bind_host = bind_host
        self.tls = tls
        # Several control services may share one state store: the first is the one that started
        # this worker, the others are where it turns when that one goes away.
        self._addresses = [a.strip() for a in control_address.split(",") if a.strip()]
        self._control_address = self._addresses[0]
        self._token = token
        self._metadata = bearer(token)
        self._channel = channel(self._control_address, tls.channel_credentials() if tls is not None else None)
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)
        self._old_channels: list[grpc.aio.Channel] = []
        self._stop = asyncio.Event()
        # The next revision's serving process, started once one serves (``vastrpc.serve.standby``).
        self._standby = Standby(self._stop) if standby and container is None else None
        self._next: tuple[dict[str, str], str] | None = None  # its environment and interpreter
        self._workdir = home / "work" / worker_id
        # Every worker of this host shares it: a file is downloaded and written once per host.
        self._files: FileCache | None = None
        self._sweep: asyncio.Future[bool] | None = None
        self._serving: set[ServingProcess] = set()
        # Calls started by serving processes already stopped: the heartbeat's count never goes back.
        self._retired_calls = 0
        # Set by the control service at registration: serve and report Prometheus metrics.
        self._serve_metrics = False
        self._metrics_address = ""  # of the serving process that serves now
        self._call_stats = CallStatsReader()
        self._assignments: asyncio.Queue[control_pb2.WatchWorkerResponse] = asyncio.Queue()
        self._secret_names: set[str] = set()  # of the revision being installed

    async def _report(self, state: common_pb2.WorkerState, revision_id: str, **fields: Any) -> None:
        await self._stub.UpdateWorker(
            control_pb2.UpdateWorkerRequest(worker_id=self.worker_id, state=state, revision_id=revision_id, **fields),
            metadata=self._metadata,
            timeout=30,
        )

    async def _fail(self, revision_id: str, step: str, message: str, log_tail: str = "") -> None:
        log.error("%s failed: %s", step, message)
        try:
            await self._report(
                common_pb2.WORKER_STATE_FAILED,
                revision_id,
                failure=common_pb2.Failure(step=step, message=message, log_tail=log_tail),
            )
        except grpc.aio.AioRpcError as exc:
            log.error("could not report the failure to the control service: %s", exc.details())

    async def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        request = control_pb2.RegisterWorkerRequest(
            worker_id=self.worker_id, pid=os.getpid(), hostname=socket.gethostname()
        )
        for attempt in range(1, len(self._addresses) + 1):
            try:
                reg = await self._stub.RegisterWorker(request, metadata=self._metadata, timeout=30)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < len(self._addresses):
                    self._switch_control()
                    continue
                problem = tls_failure(exc, self._control_address, self.tls)
                log.error(
                    "cannot register with the control service: %s", problem or f"{exc.code().name} {exc.details()}"
                )
                return 1
        self._serve_metrics = reg.serve_metrics
        background = [
            loop.create_task(self._heartbeat(reg.heartbeat_interval or 2.0)),
            loop.create_task(self._watch_assignments()),
        ]
        try:
            return await self._serve(reg)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await asyncio.gather(*(p.stop(_STOP_GRACE) for p in list(self._serving)), return_exceptions=True)
            for waiting in (self._spare_serving, self._prepared):
                if waiting is not None:
                    await waiting.stop(0)
            if self._standby is not None:
                await self._standby.stop()
            shutil.rmtree(self._workdir, ignore_errors=True)
            for old_channel in (self._channel, *self._old_channels):
                await old_channel.close()

    async def _serve(self, reg: control_pb2.RegisterWorkerResponse) -> int:
        revision_id, spec = reg.revision_id, reg.spec
        try:
            current = await self._bring_up(revision_id, spec, reg.endpoint_id, reg.endpoint_token)
        except (DeploymentError, BundleError) as exc:
            return await self._failed(revision_id, exc)
        if current is None:
            await self._report(common_pb2.WORKER_STATE_STOPPED, revision_id)
            return 0
        loop = asyncio.get_running_loop()
        while True:
            stop = loop.create_task(self._stop.wait())
            nxt = loop.create_task(self._assignments.get())
            await asyncio.wait({stop, nxt, current.exited}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not nxt.done():
                nxt.cancel()
            if self._stop.is_set() or (nxt.done() and not nxt.cancelled() and nxt.result().stop):
                log.info("stopping: draining the serving process (pid %d)", current.proc.pid)
                await current.stop(_STOP_GRACE)
                await self._report(common_pb2.WORKER_STATE_STOPPED, revision_id)
                return 0
            if current.exited.done():
                await self._fail(
                    revision_id, "serve", f"the serving process exited with code {current.exited.result()}"
                )
                return 1
            assignment = nxt.result()
            if assignment.revision_id == revision_id:
                continue
            if assignment.spec.digests.environment != spec.digests.environment:
                continue  # a new environment: the control service restarts this worker (tier 3)
            if assignment.spec.digests.code == spec.digests.code:
                revision_id, spec = assignment.revision_id, assignment.spec  # settings only (tier 1)
                continue
            log.info("update in place: revision %s → %s", revision_id, assignment.revision_id)
            try:
                new = await self._bring_up(
                    assignment.revision_id, assignment.spec, reg.endpoint_id, assignment.endpoint_token
                )
            except (DeploymentError, BundleError) as exc:
                # The control service fails the new revision and stops this worker.
                await self._failed(assignment.revision_id, exc)
                continue
            if new is None:
                continue
            old, current = current, new
            revision_id, spec = assignment.revision_id, assignment.spec
            self._spawn_drain(old)

    def _spawn_drain(self, old: ServingProcess) -> None:
        async def drain() -> None:
            await old.stop(_STOP_GRACE)
            self._serving.discard(old)
            self._retired_calls += old.calls_started
            log.info("drained the previous serving process (pid %d)", old.proc.pid)

        task = asyncio.get_running_loop().create_task(drain())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _failed(self, revision_id: str, exc: VastrpcError) -> int:
        if isinstance(exc, DeploymentError):
            await self._fail(revision_id, exc.step or "install", exc.reason, exc.log_tail)
        else:
            await self._fail(revision_id, "download", str(exc))
        return 1

    async def _bring_up(
        self, revision_id: str, spec: control_pb2.DeploymentSpec, endpoint_id: str, endpoint_token: str
    ) -> ServingProcess | None:
        """Download, install and start ``revision_id``; reports ready. None when stopped meanwhile."""

        async def on_state(name: str) -> None:
            await self._report(_STATES[name], revision_id)

        await on_state("downloading")
        # The image's id in the engine (empty: missing), asked while the bundle downloads (about 40 ms with podman).
        present = (
            asyncio.ensure_future(self.container.engine.image_id(spec.image.from_image, self.container.env))
            if self.container is not None
            else None
        )
        if present is not None:  # a failed download leaves it unawaited: its outcome is not an error
            present.add_done_callback(lambda f: f.cancelled() or f.exception())
        bundle_dir = await self._download(endpoint_id, revision_id, spec.digests.bundle, spec.bundle_size)
        image_id = ""
        if self.container is not None and present is not None:
            image_id = await self.container.ensure_image(spec.image, present, self._workdir, on_state)
        await on_state("installing")
        env, python, ports, prepared = await self._install(spec, bundle_dir, image_id)
        launch = None
        if self.container is not None and prepared is not None:
            secrets = {k: env[k] for k in self._secret_names if k in env}
            launch = self.container.launch(prepared, spec.image, bundle_dir, env, secrets, ports)
        # The secrets reach the serving process in its config, never in the environment it
        # starts with (its /proc/<pid>/environ).
        secrets = {k: env.pop(k) for k in self._secret_names if k in env}
        if self._stop.is_set():
            await self._drop_prepared()
            return None
        await on_state("loading")
        config = {
            "worker_id": self.worker_id,
            "endpoint_id": endpoint_id,
            "revision_id": revision_id,
            "module": spec.module,
            "name": spec.name,
            "tag": spec.tag,
            "endpoint_token": endpoint_token,
            "bundle_dir": str(bundle_dir),
            "bind_host": self.bind_host,
            "advertise_host": self.bind_host,
            "grace": _STOP_GRACE,
            "metrics": self._serve_metrics,
            "secrets": secrets,
        }
        serving = await self._start_serving(config, env, bundle_dir, python, launch)
        self._serving.add(serving)
        try:
            await serving.wait_ready(on_state)
        except DeploymentError:
            self._serving.discard(serving)
            await serving.stop(_STOP_GRACE)
            raise
        await self._report(
            common_pb2.WORKER_STATE_READY,
            revision_id,
            address=serving.address,
            score=serving.score,
            capacity=serving.capacity,
            metrics_address=serving.metrics_address,
            published_ports=[
                common_pb2.PublishedPort(port=p.port, protocol=PORT_PROTOCOL_VALUES[p.protocol], address=p.address)
                for p in ports
            ],
        )
        self._metrics_address = serving.metrics_address
        if self._standby is not None and self._next is not None and not self._stop.is_set():
            await self._standby.start(self._next[0], self._workdir, self._next[1])
        return serving

    async def _start_serving(
        self, config: dict[str, Any], env: dict[str, str], bundle_dir: Path, python: str, launch: Any
    ) -> ServingProcess:
        """The revision's serving process: the one started during the install (``_install``), else a new one."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            await prepared.configure(config, self.tls)
            return prepared
        return await ServingProcess.start(config, env, bundle_dir, tls=self.tls, python=python, container=launch)

    async def _drop_prepared(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            await prepared.stop(0)

    async def _host_runtime(
        self, image: control_pb2.ImageSpec, bundle_dir: Path, env: dict[str, str]
    ) -> tuple[str, list[HostPort]]:
        """The image's absolute copies, Python and published ports as this worker, on its host, applies them.

        Copies to absolute paths stay in the bundle folder (``VASTRPC_COPY_ROOT`` says where);
        ``Image.venv`` serves when usable on this host; each published port gets a free port
        of the address the worker serves on, in ``env`` (see ``vastrpc._hostimage``).
        Returns the interpreter to serve with and the ports.
        """
        if image.absolute_copies:
            env[ENV_COPY_ROOT] = str(copy_root(bundle_dir))
            for copied in image.absolute_copies:
                _print(f"copy to {copied.destination}: at ${ENV_COPY_ROOT}{copied.destination} on this host")
        # Both touch the system (sockets; a venv's interpreter) only when the image asks: no thread hop otherwise.
        ports = (
            await asyncio.to_thread(allocate_ports, self.bind_host, list(image.published_ports))
            if image.published_ports
            else []
        )
        env.update(port_environment(ports))
        for port in ports:
            _print(f"publish_port {port.port}/{port.protocol}: {port.address}")
        if image.python_environment.venv_path:
            python, note = await asyncio.to_thread(python_for, image, env)
        else:
            python, note = python_for(image, env)
        if note:
            _print(note)
        return python, ports

    async def _download(self, endpoint_id: str, revision_id: str, digest: str, size: int = 0) -> Path:
        """The revision's folder, laid out from the endpoint's file cache on this host (``vastrpc.serve.download``)."""
        if self._files is None:
            root = self.home / "cache" / "files"
            self._files = await asyncio.to_thread(endpoint_cache, root, endpoint_id)
            # The other endpoints' caches are swept meanwhile, in a thread (at most hourly per host).
            self._sweep = asyncio.ensure_future(asyncio.to_thread(sweep_caches, root, endpoint_id))
        dest = self._workdir / f"{revision_id}-{uuid.uuid4().hex[:8]}"
        return await download_bundle(self._stub, self._metadata, digest, size, self._files, dest)

    async def _install(
        self, spec: control_pb2.DeploymentSpec, bundle_dir: Path, image_id: str = ""
    ) -> tuple[dict[str, str], str, list[HostPort], Prepared | None]:
        """Install the revision's packages, apply its image on this host, then run its startup commands.

        On a container provider the pip packages are installed for the image's Python, and the
        apt packages and startup commands run inside the image instead (``ContainerWorker``).

        Returns:
            The serving process's environment, its interpreter, the published ports
            (``_host_runtime``; the startup commands see the same environment) and, on a
            container provider, what its container runs.
        """
        image = spec.image
        # A serving process started ahead: the spare agent's for the first revision (it never
        # waits for another), then the one started once the last revision served.
        spare, self._spare_serving = self._spare_serving, None
        if spare is None and self._standby is not None:
            spare = self._standby.take()
        self._next = None
        if spare is not None and (self.container is not None or image.apt_packages or image.startup_commands):
            await spare.stop(0)
            spare = None
        # The allow-list of the agent's own environment and vastrpc's path, nothing else: not the
        # token, the TLS files (the serving process gets its own in its config) or VASTRPC_HOME.
        env = serving_environ()
        env.update(image.env)
        try:
            secrets = unseal(self._token, image.sealed_secrets)
            self._secret_names = set(secrets)
            env.update(secrets)
        except VastrpcError as exc:
            if spare is not None:
                await spare.stop(0)
            raise DeploymentError(str(exc), step="secrets") from None
        if self.container is not None:
            return await self._install_for_container(image, image_id, env, bundle_dir)
        site = pip_site(list(image.pip_packages), self.home / "envs")
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, bundle_dir, env.get("PYTHONPATH")) if p)
        # The next revision's serving process starts with this, its secrets, folder, ports and copies' root aside.
        shared = without_bundle({k: v for k, v in env.items() if k not in self._secret_names}, bundle_dir)
        python, ports = await self._host_runtime(image, bundle_dir, env)
        if not image.apt_packages and not image.startup_commands:
            # Its interpreter starts while the packages install: neither changes what the other
            # reads (the packages' folder joins the import path once it exists). Apt packages
            # and startup commands may change the interpreter's own site: it starts after them.
            public = {k: v for k, v in env.items() if k not in self._secret_names}
            self._prepared = await prepare(public, bundle_dir, python, spare)
            self._next = (shared, python)
        try:
            await asyncio.to_thread(ensure_apt, list(image.apt_packages), log=_print)
            await asyncio.to_thread(ensure_pip_env, list(image.pip_packages), self.home / "envs", log=_print)
        except BaseException:
            await self._drop_prepared()
            raise
        if image.startup_commands:
            await asyncio.to_thread(
                run_startup_commands,
                list(image.startup_commands),
                cwd=bundle_dir,
                env=env,
                log=_print,
                timeout=image.startup_timeout or 600.0,
            )
        log.info(
            "install: %d pip, %d apt package(s), %d startup command(s) done",
            len(image.pip_packages),
            len(image.apt_packages),
            len(image.startup_commands),
        )
        return env, python, ports, None

    async def _install_for_container(
        self, image: control_pb2.ImageSpec, image_id: str, env: dict[str, str], bundle_dir: Path
    ) -> tuple[dict[str, str], str, list[HostPort], Prepared | None]:
        """``_install`` on a container provider: pip packages for the image's Python, the rest in its container."""
        assert self.container is not None
        python, target, ports = await self.container.python_of(image, image_id)
        site = await asyncio.to_thread(
            ensure_pip_env, list(image.pip_packages), self.home / "envs", target=target, log=_print
        )
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, bundle_dir, env.get("PYTHONPATH")) if p)
        secrets = {k: env[k] for k in self._secret_names if k in env}
        prepared = await self.container.prepare(
            image, image_id, python, target, bundle_dir=bundle_dir, site=site, secrets=secrets
        )
        return env, python, ports, prepared

    async def _watch_assignments(self) -> None:
        """Queue what the control service says this worker should serve; reconnect when the stream breaks."""
        while True:
            try:
                async for assignment in self._stub.WatchWorker(
                    control_pb2.WatchWorkerRequest(worker_id=self.worker_id), metadata=self._metadata
                ):
                    self._assignments.put_nowait(assignment)
            except grpc.aio.AioRpcError as exc:
                log.debug("assignment watch ended (%s); retrying", exc.code().name)
            await asyncio.sleep(1.0)

    async def _read_call_stats(self, interval: float) -> list[control_pb2.CallStats]:
        # One source per serving process of this agent process: a restarted worker starts afresh.
        sources = [(f"{os.getpid()}.{p.proc.pid}", p.metrics_address) for p in self._serving if p.metrics_address]
        return await self._call_stats.read(sources, timeout=min(2.0, interval))

    def _switch_control(self) -> None:
        """Turn to the next control service of the list (they share the state: it knows this worker)."""
        old = self._control_address
        self._control_address = self._addresses[(self._addresses.index(old) + 1) % len(self._addresses)]
        # The old channel stays open until the agent exits: closing it would cancel (not fail)
        # the assignment watch on it, which reconnects through the new stub once it breaks.
        self._old_channels.append(self._channel)
        self._channel = channel(self._control_address, self.tls.channel_credentials() if self.tls else None)
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)
        log.warning("control service %s unreachable: reporting to %s from now on", old, self._control_address)

    async def _heartbeat(self, interval: float) -> None:
        lost_since: float | None = None
        # Unanswered heartbeats to one control service before turning to the next, if there is one.
        failover_after = max(3.0, 3 * interval)
        switched_at: float | None = None
        loop = asyncio.get_running_loop()
        # Each beat a message on one stream (unary calls to a service without it).
        sender = HeartbeatSender(self._metadata)
        try:
            while True:
                await asyncio.sleep(interval)
                loads = await asyncio.gather(*(p.load() for p in list(self._serving)))
                request = control_pb2.HeartbeatRequest(
                    worker_id=self.worker_id,
                    calls_in_flight=sum(n for n, _, _ in loads),
                    calls_queued=sum(q for _, q, _ in loads),
                    calls_started=self._retired_calls + sum(s for _, _, s in loads),
                    call_stats=await self._read_call_stats(interval),
                    metrics_address=self._metrics_address,
                )
                try:
                    resp = await sender.send(self._stub, request, timeout=interval * 2)
                except Unanswered as exc:
                    now = loop.time()
                    lost_since = lost_since or now
                    if now - lost_since > _CONTROL_LOST_AFTER:
                        log.error("control service unreachable for %.0fs (%s); stopping", now - lost_since, exc.reason)
                        self._stop.set()
                    elif len(self._addresses) > 1 and now - (switched_at or lost_since) > failover_after:
                        switched_at = now
                        self._switch_control()
                    continue
                lost_since = None
                if resp.stop:
                    log.info("the control service asked this worker to stop")
                    self._stop.set()
                switched_at = None
        finally:
            sender.close()


async def main(
    control_address: str,
    worker_id: str,
    token: str,
    home: Path | None = None,
    tls: TlsFiles | None = None,
    bind_host: str | None = None,
    spare_serving: ServingProcess | None = None,
) -> int:
    """Run a worker agent until it is stopped (``asyncio.run(main(...))``); returns the process exit code.

    Args:
        control_address: ``host:port`` of the control service; a comma-separated list names
            other control services sharing its state, which the worker turns to when it goes away.
        worker_id: The id the control service gave this worker.
        token: The worker's token (``VASTRPC_WORKER_TOKEN``).
        home: The vastrpc home (caches); defaults to ``VASTRPC_HOME`` or ``~/.vastrpc``.
        tls: TLS to the control service (``ca_file`` to trust it, the certificate presented
            under mutual TLS); the serving process serves calls with the same certificate.
            None: plaintext everywhere.
        bind_host: The address the serving process listens on and registers for clients;
            defaults to ``VASTRPC_WORKER_HOST`` (a cluster provider sets the node's address),
            else loopback.
        spare_serving: A serving process started before the worker was known, waiting for
            its config; a spare agent's (``vastrpc.serve.spare``).

    ``VASTRPC_CONTAINER_ENGINE`` (set by a container provider) runs each serving process in a
    container of the deployment's image (``vastrpc.serve.container``). ``VASTRPC_SPARE_SERVING=0``
    (set by a control service run with ``--no-spare-agent``) starts no serving process ahead
    for the next revision (``vastrpc.serve.standby``).
    """
    # A no-op when logging is set up already (the spare agent does so before it waits).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s", stream=sys.stderr)
    from vastrpc.config import default_home

    host = bind_host or os.environ.get(ENV_WORKER_HOST) or "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address, as host:port needs it
    container = ContainerEngine.from_env(os.environ)
    if not token:
        log.error("no worker token: set VASTRPC_WORKER_TOKEN (the control service does this for workers it starts)")
        return 2
    # The agent's channel and events belong to the loop that runs it.
    agent = Agent(
        control_address,
        worker_id,
        token,
        home or default_home(),
        bind_host=host,
        tls=tls,
        container=container,
        spare_serving=spare_serving,
        standby=os.environ.get(ENV_SPARE_SERVING) != "0",
    )
    return await agent.run()
