"""The agent's handle on one revision's serving process: start it, follow its events, ask its load, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from vastrpc._errors import DeploymentError
from vastrpc._grpc import bearer, channel
from vastrpc._process import module_argv
from vastrpc._tls import TlsFiles
from vastrpc._workerenv import fits_spare
from vastrpc.api.v1 import worker_pb2, worker_pb2_grpc
from vastrpc.serve.container import ContainerLaunch

OnState = Callable[[str], Awaitable[None]]

log = logging.getLogger("vastrpc.worker")


class ServingProcess:
    """``python -m vastrpc.serve.process`` for one revision, as the agent runs it."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        events: asyncio.StreamReader,
        transport: Any,
        token: str,
        tls: TlsFiles | None = None,
        container: ContainerLaunch | None = None,
    ):
        self.proc = proc
        self.container = container
        self._events = events
        self._transport = transport
        self._token = token
        self._tls = tls
        self.address = ""
        self.score = 0.0
        self.capacity = 0
        self.metrics_address = ""  # host:port of its Prometheus metrics, when it serves them
        self.calls_started = 0  # as of the last load()
        self.exited = asyncio.get_running_loop().create_task(proc.wait())
        self._channel: grpc.aio.Channel | None = None
        self.env: dict[str, str] = {}  # the environment it started with (``spawn``); empty in a container
        self.python = ""  # the interpreter it runs on (``spawn``)
        # The revision's environment, which its config carries: set on a spare's (see ``prepare``).
        self.config_env: dict[str, str] | None = None

    @classmethod
    async def start(
        cls,
        config: dict[str, Any],
        env: dict[str, str],
        cwd: Path,
        tls: TlsFiles | None = None,
        python: str = sys.executable,
        container: ContainerLaunch | None = None,
    ) -> ServingProcess:
        """Spawn the process with ``config`` on its stdin and a pipe for its events.

        ``python`` is the interpreter it runs on (the agent's own, or the image's ``venv``).
        With ``container``, the process runs in that container instead (``env``, ``cwd`` and
        ``python`` are then the launch's), its events on the container's stdout. ``tls``: as
        for ``configure``.
        """
        if container is not None:
            return await cls._start_in(container, _with_tls(config, tls), tls)
        serving = await cls.spawn(env, cwd, python)
        await serving.configure(config, tls)
        return serving

    @classmethod
    async def spawn(cls, env: dict[str, str], cwd: Path, python: str = sys.executable) -> ServingProcess:
        """Start the process with ``env``; it imports vastrpc and waits for its config (``configure``).

        The worker agent's spare (``vastrpc.serve.spare``) starts one before it knows its
        deployment, an agent one for its next revision (``vastrpc.serve.standby``); ``start``
        starts one and configures it at once.
        """
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *module_argv("vastrpc.serve.process", python),
                str(write_fd),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                env=env,
                cwd=cwd,
            )
        finally:
            os.close(write_fd)
        events = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(events), os.fdopen(read_fd, "rb")
        )
        serving = cls(proc, events, transport, "")
        serving.env, serving.python = env, python
        return serving

    async def configure(self, config: dict[str, Any], tls: TlsFiles | None = None) -> None:
        """Send the process its revision's ``config`` (on its stdin, which closes): it loads and serves it.

        With ``tls``, the process serves calls over TLS with its certificate (requiring client
        certificates signed by its CA when it says so), and the agent's channel to it uses TLS.
        """
        config = _with_tls(config, tls)
        if self.config_env is not None:
            config = {**config, "env": self.config_env}
        self._token, self._tls = config["endpoint_token"], tls
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(config).encode())
        # A process that died meanwhile closed the pipe: wait_ready reports its exit.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self.proc.stdin.drain()
        self.proc.stdin.close()

    @classmethod
    async def _start_in(
        cls, container: ContainerLaunch, config: dict[str, Any], tls: TlsFiles | None
    ) -> ServingProcess:
        proc = await asyncio.create_subprocess_exec(
            *container.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=container.env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(config).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        return cls(proc, proc.stdout, None, config["endpoint_token"], tls, container)

    async def wait_ready(self, on_state: OnState) -> None:
        """Follow the events until the process serves.

        Raises:
            DeploymentError: It reported a failed step, or exited before it was ready.
        """
        step = "import"
        async for line in self._events:
            event = json.loads(line)
            kind = event.get("event")
            if kind == "state":
                step = event["state"].removesuffix("ing")
                await on_state(event["state"])
            elif kind == "ready":
                self.address, self.score, self.capacity = event["address"], event["score"], event["capacity"]
                self.metrics_address = event.get("metrics_address", "")
                return
            elif kind == "failed":
                await self.exited
                raise DeploymentError(event["message"], step=event["step"])
        code = await self.exited
        raise DeploymentError(f"the serving process exited with code {code} before it was ready", step=step)

    async def load(self) -> tuple[int, int, int]:
        """(calls running or queued, of those queued, calls started so far); zeros when it cannot be asked."""
        if not self.address or self.exited.done():
            return 0, 0, 0
        if self._channel is None:
            self._channel = channel(self.address, self._tls.channel_credentials() if self._tls else None)
        try:
            info = await worker_pb2_grpc.WorkerServiceStub(self._channel).GetWorkerInfo(
                worker_pb2.GetWorkerInfoRequest(), metadata=bearer(self._token), timeout=2
            )
        except grpc.aio.AioRpcError:
            return 0, 0, 0
        self.calls_started = int(info.calls_started)
        return int(info.calls_in_flight), int(info.calls_queued), self.calls_started

    async def stop(self, grace: float) -> int:
        """SIGTERM (it drains its calls and exits its contexts), SIGKILL after ``grace``; returns the exit code."""
        if not self.exited.done():
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(self.exited)
            except TimeoutError:
                self.proc.kill()
                if self.container is not None:
                    await self.container.remove()  # killing the engine command does not stop it
        code = await self.exited
        if self._transport is not None:
            self._transport.close()
        if self._channel is not None:
            await self._channel.close()
        return code


async def prepare(env: dict[str, str], bundle_dir: Path, python: str, waiting: ServingProcess | None) -> ServingProcess:
    """A serving process for a revision whose environment is ``env`` (secrets aside), waiting for its config.

    ``waiting`` is a serving process started before this revision was known: the spare
    agent's (``vastrpc.serve.spare``, the base environment) or the one its agent started
    for its next revision once the last one served (``vastrpc.serve.standby``, that
    revision's environment). It serves when it can take ``env`` (same interpreter,
    ``fits_spare``: the config carries ``env``, applied before the deployment's code runs);
    otherwise it is stopped and a new process started with ``env``. Either way it starts
    before the revision's packages are installed: the agent configures it once they are.
    """
    if waiting is not None:
        if python == waiting.python and not waiting.exited.done() and fits_spare(env, waiting.env, bundle_dir):
            log.info("loading: in the pre-started serving process (pid %d)", waiting.proc.pid)
            waiting.config_env = dict(env)
            return waiting
        log.info("loading: a new serving process (the pre-started one cannot take this environment)")
        await waiting.stop(0)
    return await ServingProcess.spawn(env, bundle_dir, python)


def _with_tls(config: dict[str, Any], tls: TlsFiles | None) -> dict[str, Any]:
    """``config`` with the TLS files the serving process serves calls with, when there are some."""
    if tls is None:
        return config
    return {
        **config,
        "tls_cert": str(tls.cert_file),
        "tls_key": str(tls.key_file),
        "tls_ca": str(tls.ca_file) if tls.ca_file else None,
        "tls_require_client_cert": tls.require_client_cert,
    }
