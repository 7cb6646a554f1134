"""Simulated worker agents: asyncio tasks speaking the agent's side of the real ControlService protocol.

One process stands in for a cluster: each simulated worker does what ``vastrpc.serve.agent``
does over gRPC — RegisterWorker with its own worker token, UpdateWorker through downloading,
installing and loading to ready (with an address nobody calls), a WatchWorker stream open, and
a heartbeat every interval, as a message on its HeartbeatStream (the agent's own
``HeartbeatSender``; unary Heartbeat calls instead while ``unary_heartbeats`` is set, as older
agents do: a ``unary`` / ``stream`` line on the fleet's stdin switches) — but serves nothing.
``bench/control_scale.py`` measures a control service under a thousand of them;
``tests/control/test_scale.py`` runs a few hundred.

Workers come from ``JoinEndpoint`` (the API key admits workers started by hand), plus the one
worker the provider starts when the endpoint is provisioned: the control service is started
with ``bench/control_handoff.py`` as its ``--worker-command``, which writes that worker's id
and token to a folder and sleeps, so that the fleet speaks for it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from vastrpc._grpc import CHANNEL_OPTIONS, bearer
from vastrpc._manifest import encode_manifest
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc
from vastrpc.serve.heartbeats import ANSWER_EVERY, HeartbeatSender, Unanswered

HERE = Path(__file__).resolve()
WATCH_METHOD = "/vastrpc.api.v1.ControlService/WatchEndpoint"
# The states an agent reports on its way to ready, as vastrpc.serve.agent does.
_STARTUP = (
    common_pb2.WORKER_STATE_DOWNLOADING,
    common_pb2.WORKER_STATE_INSTALLING,
    common_pb2.WORKER_STATE_LOADING,
    common_pb2.WORKER_STATE_BENCHMARKING,
)


@dataclass(frozen=True)
class Credentials:
    """A worker's id and the token it presents."""

    worker_id: str
    token: str


def handoff_command(folder: Path) -> list[str]:
    """The control service's ``--worker-command``: its workers hand their token to ``folder`` and sleep."""
    return [sys.executable, str(HERE.with_name("control_handoff.py")), "--dir", str(folder)]


def handed_off(folder: Path) -> list[Credentials]:
    """The workers the provider started so far, from their handoff files."""
    return [Credentials(**json.loads(p.read_text())) for p in sorted(folder.glob("w-*.json"))]


def spec(name: str, bundle_digest: str) -> control_pb2.DeploymentSpec:
    """A deployment of one function whose provider-started worker count is one (the rest join)."""
    return control_pb2.DeploymentSpec(
        name=name,
        module="deploy",
        image=control_pb2.ImageSpec(from_image="python:3.11-slim"),
        autoscaling=control_pb2.AutoscalingSpec(min_workers=1, max_workers=1, target_util=0.8),
        functions=[control_pb2.FunctionSpec(name="noop", max_concurrency=4, has_benchmark=True)],
        digests=control_pb2.RevisionDigests(bundle=bundle_digest, code="c", environment="e", autoscaling="a"),
    )


async def deploy(stub: control_pb2_grpc.ControlServiceStub, api_key: str, name: str) -> str:
    """Register, upload and provision the simulated deployment; returns its endpoint id."""
    data = encode_manifest([]).data  # a bundle of no files: nobody unpacks it
    digest = hashlib.sha256(data).hexdigest()
    metadata = bearer(api_key)
    reg = await stub.RegisterDeployment(
        control_pb2.RegisterDeploymentRequest(spec=spec(name, digest)), metadata=metadata, timeout=30
    )

    async def chunks() -> AsyncIterator[control_pb2.UploadBundleRequest]:
        header = control_pb2.UploadBundleRequest.Header(digest=digest, size=len(data))
        yield control_pb2.UploadBundleRequest(header=header)
        yield control_pb2.UploadBundleRequest(chunk=data)

    if reg.upload_required:
        await stub.UploadBundle(chunks(), metadata=metadata, timeout=30)
    await stub.Provision(
        control_pb2.ProvisionRequest(endpoint_id=reg.endpoint_id, revision_id=reg.revision_id),
        metadata=metadata,
        timeout=30,
    )
    return reg.endpoint_id


async def join(
    stub: control_pb2_grpc.ControlServiceStub, api_key: str, name: str, count: int, concurrency: int = 32
) -> list[Credentials]:
    """``count`` workers admitted by ``JoinEndpoint``, as ``vastrpc worker --join`` does."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> Credentials:
        async with semaphore:
            r = await stub.JoinEndpoint(
                control_pb2.JoinEndpointRequest(name=name), metadata=bearer(api_key), timeout=60
            )
            return Credentials(r.worker_id, r.worker_token)

    return list(await asyncio.gather(*(one() for _ in range(count))))


@dataclass
class FleetStats:
    """What the fleet saw: heartbeats answered and failed, assignments received."""

    heartbeats: int = 0
    heartbeat_errors: int = 0
    assignments: int = 0
    ready: int = 0
    latencies: list[float] = field(default_factory=list)


class Fleet:
    """Simulated worker agents over a few shared channels (each agent would have its own connection).

    Args:
        address: The control service's ``host:port``.
        workers: The workers to play.
        heartbeat_interval: Seconds between one worker's heartbeats (the service's
            ``--heartbeat-interval``); their phases are spread at random over it.
        channels: gRPC channels the workers share, round-robin.
        watch_assignments: Keep a WatchWorker stream open per worker, as a real agent does.
        unary_heartbeats: One unary Heartbeat call per beat (older agents) instead of a
            message on the worker's HeartbeatStream; may be changed while the fleet runs, as
            may ``answer_every`` (the agent's: an answer every fourth beat).
    """

    def __init__(
        self,
        address: str,
        workers: Sequence[Credentials],
        *,
        heartbeat_interval: float = 1.0,
        channels: int = 16,
        watch_assignments: bool = True,
        unary_heartbeats: bool = False,
    ) -> None:
        self.unary_heartbeats = unary_heartbeats
        self.answer_every = ANSWER_EVERY
        self.workers = list(workers)
        self.heartbeat_interval = heartbeat_interval
        self.watch_assignments = watch_assignments
        self.stats = FleetStats()
        self._channels = [grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS)) for _ in range(channels)]
        self._stubs = [control_pb2_grpc.ControlServiceStub(c) for c in self._channels]
        self._tasks: list[asyncio.Task[None]] = []

    def stub(self, index: int) -> control_pb2_grpc.ControlServiceStub:
        return self._stubs[index % len(self._stubs)]

    async def start(self, concurrency: int = 64) -> None:
        """Bring every worker to ready (at most ``concurrency`` at once), then keep them heartbeating."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int, worker: Credentials) -> None:
            async with semaphore:
                await self._bring_up(index, worker)

        await asyncio.gather(*(one(i, w) for i, w in enumerate(self.workers)))

    async def _bring_up(self, index: int, worker: Credentials) -> None:
        stub, metadata = self.stub(index), bearer(worker.token)
        reg = await stub.RegisterWorker(
            control_pb2.RegisterWorkerRequest(worker_id=worker.worker_id, pid=os.getpid(), hostname="sim"),
            metadata=metadata,
            timeout=60,
        )
        # As the agent does: heartbeats and the assignment watch from registration on.
        self._tasks.append(asyncio.create_task(self._heartbeats(index, worker)))
        if self.watch_assignments:
            self._tasks.append(asyncio.create_task(self._watch(index, worker)))
        for state in _STARTUP:
            await self.report(index, state, reg.revision_id)
        await self.report(index, common_pb2.WORKER_STATE_READY, reg.revision_id)
        self.stats.ready += 1

    async def report(self, index: int, state: int, revision_id: str = "") -> None:
        """Worker ``index`` reports ``state`` (ready: with an address on a port nobody serves)."""
        worker = self.workers[index]
        fields: dict[str, object] = {}
        if state == common_pb2.WORKER_STATE_READY:
            fields = {"address": f"127.0.0.1:{10000 + index % 50000}", "score": 100.0 + index % 7, "capacity": 4}
        await self.stub(index).UpdateWorker(
            control_pb2.UpdateWorkerRequest(worker_id=worker.worker_id, state=state, revision_id=revision_id, **fields),
            metadata=bearer(worker.token),
            timeout=60,
        )

    async def _heartbeats(self, index: int, worker: Credentials) -> None:
        stub, metadata = self.stub(index), bearer(worker.token)
        request = control_pb2.HeartbeatRequest(worker_id=worker.worker_id)
        sender = HeartbeatSender(metadata)
        await asyncio.sleep(random.uniform(0, self.heartbeat_interval))
        next_at = time.monotonic()
        try:
            while True:
                next_at += self.heartbeat_interval
                started = time.monotonic()
                try:
                    if self.unary_heartbeats:
                        sender.close()
                        await stub.Heartbeat(request, metadata=metadata, timeout=self.heartbeat_interval * 2)
                    else:
                        sender.answer_every = self.answer_every
                        await sender.send(stub, request, timeout=self.heartbeat_interval * 2)
                    self.stats.heartbeats += 1
                    self.stats.latencies.append(time.monotonic() - started)
                except (grpc.aio.AioRpcError, Unanswered):
                    self.stats.heartbeat_errors += 1
                # A fixed rate, as the agent's loop aims for: a late heartbeat does not push the rest back.
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            sender.close()

    async def _watch(self, index: int, worker: Credentials) -> None:
        call = self.stub(index).WatchWorker(
            control_pb2.WatchWorkerRequest(worker_id=worker.worker_id), metadata=bearer(worker.token)
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ in call:
                self.stats.assignments += 1

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._channels))


async def _fleet_main(argv: Sequence[str]) -> int:
    """Run a fleet from credentials on stdin (JSON lines) until stdin closes; report progress on stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--control", required=True)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--starting", type=int, default=16, help="workers coming up at once")
    parser.add_argument("--unary-heartbeats", action="store_true", help="one unary call per heartbeat")
    args = parser.parse_args(argv)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    workers = []
    while (line := await reader.readline()).strip():
        workers.append(Credentials(**json.loads(line)))
    fleet = Fleet(
        args.control,
        workers,
        heartbeat_interval=args.heartbeat_interval,
        channels=args.channels,
        unary_heartbeats=args.unary_heartbeats,
    )
    await fleet.start(args.starting)
    print(json.dumps({"ready": fleet.stats.ready}), flush=True)

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            s = fleet.stats
            lat = sorted(s.latencies[-5000:]) or [0.0]
            line = {
                "heartbeats": s.heartbeats,
                "errors": s.heartbeat_errors,
                "assignments": s.assignments,
                "hb_p50_ms": 1000 * lat[len(lat) // 2],
                "hb_p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
            }
            del s.latencies[:-5000]
            print(json.dumps(line), flush=True)

    reporting = asyncio.create_task(report())
    # Until the parent closes our stdin; a line "unary", "stream" or "stream-every" (each beat
    # answered, as agents before HeartbeatStreamRequest.answer_every) switches how workers beat.
    while command := (await reader.readline()).strip():
        fleet.unary_heartbeats = command == b"unary"
        fleet.answer_every = 1 if command == b"stream-every" else ANSWER_EVERY

    reporting.cancel()
    await fleet.close()
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "fleet":
        return asyncio.run(_fleet_main(sys.argv[2:]))
    print("usage: control_sim.py fleet --control ADDRESS (credentials on stdin)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
