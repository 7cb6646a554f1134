"""The worker agent: registers, downloads and installs a revision, runs its serving process, and heartbeats.

The agent is the long-lived part of a worker (its id, its caches); each revision runs in
a serving process of its own, so code and packages never mix across revisions. Clients
call the serving process directly; the agent is never a hop on a call.
"""

from __future__ import annotations

import asyncio
import json
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

from vastrpc._errors import BundleError, DeploymentError
from vastrpc._grpc import CHANNEL_OPTIONS, bearer
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc
from vastrpc.serve.install import ensure_apt, ensure_pip_env, run_startup_commands, safe_extract, verify_digest

log = logging.getLogger("vastrpc.worker")

# The agent gives up on an unreachable control service after this long, so that no
# worker outlives its control service for good.
_CONTROL_LOST_AFTER = 60.0
_STOP_GRACE = 10.0


def _print(line: str) -> None:
    print(line, flush=True)


class Agent:
    """One worker: brings up the revision it is assigned and keeps it serving until told to stop."""

    def __init__(self, control_address: str, worker_id: str, token: str, home: Path, bind_host: str = "127.0.0.1"):
        self.worker_id = worker_id
        self.home = home
        self.bind_host = bind_host
        self._metadata = bearer(token)
        self._channel = grpc.aio.insecure_channel(control_address, options=list(CHANNEL_OPTIONS))
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)
        self._stop = asyncio.Event()
        self._state: common_pb2.WorkerState = common_pb2.WORKER_STATE_STARTING
        self._revision_id = ""
        self._workdir = home / "work" / worker_id

    async def _update(self, state: common_pb2.WorkerState, **fields: Any) -> None:
        self._state = state
        await self._stub.UpdateWorker(
            control_pb2.UpdateWorkerRequest(
                worker_id=self.worker_id, state=state, revision_id=self._revision_id, **fields
            ),
            metadata=self._metadata,
            timeout=30,
        )

    async def _fail(self, step: str, message: str, log_tail: str = "") -> None:
        log.error("%s failed: %s", step, message)
        try:
            await self._update(
                common_pb2.WORKER_STATE_FAILED,
                failure=common_pb2.Failure(step=step, message=message, log_tail=log_tail),
            )
        except grpc.aio.AioRpcError as exc:
            log.error("could not report the failure to the control service: %s", exc.details())

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            reg = await self._stub.RegisterWorker(
                control_pb2.RegisterWorkerRequest(
                    worker_id=self.worker_id, pid=os.getpid(), hostname=socket.gethostname()
                ),
                metadata=self._metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            log.error("cannot register with the control service: %s %s", exc.code().name, exc.details())
            return 1
        self._revision_id = reg.revision_id
        heartbeat = loop.create_task(self._heartbeat(reg.heartbeat_interval or 2.0))
        try:
            return await self._serve_revision(reg)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            shutil.rmtree(self._workdir, ignore_errors=True)
            await self._channel.close()

    async def _serve_revision(self, reg: control_pb2.RegisterWorkerResponse) -> int:
        spec = reg.spec
        try:
            await self._update(common_pb2.WORKER_STATE_DOWNLOADING)
            bundle_dir = await self._download(spec.digests.bundle)
            await self._update(common_pb2.WORKER_STATE_INSTALLING)
            env = await self._install(spec, bundle_dir)
        except DeploymentError as exc:
            await self._fail(exc.step or "install", str(exc).split("\n--- worker log")[0], exc.log_tail)
            return 1
        except BundleError as exc:
            await self._fail("download", str(exc))
            return 1
        if self._stop.is_set():
            await self._update(common_pb2.WORKER_STATE_STOPPED)
            return 0
        await self._update(common_pb2.WORKER_STATE_LOADING)
        config = {
            "worker_id": self.worker_id,
            "endpoint_id": reg.endpoint_id,
            "revision_id": reg.revision_id,
            "module": spec.module,
            "name": spec.name,
            "tag": spec.tag,
            "endpoint_token": reg.endpoint_token,
            "bundle_dir": str(bundle_dir),
            "bind_host": self.bind_host,
            "advertise_host": self.bind_host,
            "grace": _STOP_GRACE,
        }
        return await self._run_serving_process(config, env, bundle_dir)

    async def _download(self, digest: str) -> Path:
        parts = []
        try:
            async for resp in self._stub.DownloadBundle(
                control_pb2.DownloadBundleRequest(digest=digest), metadata=self._metadata, timeout=600
            ):
                parts.append(resp.chunk)
        except grpc.aio.AioRpcError as exc:
            raise BundleError(f"cannot download bundle {digest[:12]}: {exc.code().name} {exc.details()}") from None
        data = b"".join(parts)
        verify_digest(data, digest)
        dest = self._workdir / f"{self._revision_id}-{uuid.uuid4().hex[:8]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        files = await asyncio.to_thread(safe_extract, data, dest)
        log.info("download: bundle %.12s verified, %d files extracted", digest, len(files))
        return dest

    async def _install(self, spec: control_pb2.DeploymentSpec, bundle_dir: Path) -> dict[str, str]:
        image = spec.image
        env = {k: v for k, v in os.environ.items() if k != "VASTRPC_WORKER_TOKEN"}
        env.update(image.env)
        env.update(image.secrets)
        await asyncio.to_thread(ensure_apt, list(image.apt_packages), log=_print)
        site = await asyncio.to_thread(ensure_pip_env, list(image.pip_packages), self.home / "envs", log=_print)
        paths = [str(site)] if site is not None else []
        paths.append(str(bundle_dir))
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        if image.startup_commands:
            await asyncio.to_thread(
                run_startup_commands, list(image.startup_commands), cwd=bundle_dir, env=env, log=_print
            )
        log.info(
            "install: %d pip, %d apt package(s), %d startup command(s) done",
            len(image.pip_packages),
            len(image.apt_packages),
            len(image.startup_commands),
        )
        return env

    async def _run_serving_process(self, config: dict[str, Any], env: dict[str, str], cwd: Path) -> int:
        read_fd, write_fd = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vastrpc.serve.process",
            str(write_fd),
            stdin=asyncio.subprocess.PIPE,
            pass_fds=(write_fd,),
            env=env,
            cwd=cwd,
        )
        os.close(write_fd)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(config).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        events = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(events), os.fdopen(read_fd, "rb")
        )
        reported_failure = False
        relay = loop.create_task(self._relay_events(events))
        stop = loop.create_task(self._stop.wait())
        exited = loop.create_task(proc.wait())
        try:
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                log.info("stopping: SIGTERM to the serving process (pid %d)", proc.pid)
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.shield(exited), _STOP_GRACE + 5)
                except TimeoutError:
                    proc.kill()
                    await exited
                await relay
                await self._update(common_pb2.WORKER_STATE_STOPPED)
                return 0
            await relay
            reported_failure = relay.result()
            if not reported_failure:
                await self._fail(
                    _STEP_OF_STATE.get(self._state, "serve"),
                    f"the serving process exited with code {proc.returncode}",
                )
            return 1
        finally:
            stop.cancel()
            transport.close()
            if proc.returncode is None:
                proc.kill()

    async def _relay_events(self, events: asyncio.StreamReader) -> bool:
        """Forward the serving process's events; True when it reported its own failure."""
        failed = False
        async for line in events:
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "state" and event["state"] == "benchmarking":
                await self._update(common_pb2.WORKER_STATE_BENCHMARKING)
            elif kind == "ready":
                await self._update(
                    common_pb2.WORKER_STATE_READY,
                    address=event["address"],
                    score=event["score"],
                    capacity=event["capacity"],
                )
            elif kind == "failed":
                failed = True
                await self._fail(event["step"], event["message"])
        return failed

    async def _heartbeat(self, interval: float) -> None:
        lost_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                resp = await self._stub.Heartbeat(
                    control_pb2.HeartbeatRequest(worker_id=self.worker_id),
                    metadata=self._metadata,
                    timeout=interval * 2,
                )
                lost_since = None
                if resp.stop:
                    log.info("the control service asked this worker to stop")
                    self._stop.set()
            except grpc.aio.AioRpcError as exc:
                now = loop.time()
                lost_since = lost_since or now
                if now - lost_since > _CONTROL_LOST_AFTER:
                    log.error("control service unreachable for %.0fs (%s); stopping", now - lost_since, exc.code().name)
                    self._stop.set()


_STEP_OF_STATE = {
    common_pb2.WORKER_STATE_LOADING: "import",
    common_pb2.WORKER_STATE_BENCHMARKING: "benchmark",
    common_pb2.WORKER_STATE_READY: "serve",
}


def main(control_address: str, worker_id: str, token: str, home: Path | None = None) -> int:
    """Run a worker agent until it is stopped; returns the process exit code."""
    from vastrpc.config import default_home

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s", stream=sys.stderr)
    if not token:
        log.error("no worker token: set VASTRPC_WORKER_TOKEN (the control service does this for workers it starts)")
        return 2

    async def run() -> int:
        # The agent's channel and events belong to the loop that runs it.
        return await Agent(control_address, worker_id, token, home or default_home()).run()

    return asyncio.run(run())
