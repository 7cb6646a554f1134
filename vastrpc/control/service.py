"""The ControlService servicer: authentication, request checks and protobuf conversion over the Lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc

from vastrpc._errors import (
    AuthenticationError,
    DefinitionError,
    NotFoundError,
    VastrpcError,
)
from vastrpc._grpc import token_from_metadata, tokens_equal
from vastrpc._hostimage import PORT_PROTOCOL_VALUES, protocol_name
from vastrpc._secrets import reseal
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc
from vastrpc.control.heartbeats import Heartbeats
from vastrpc.control.lifecycle.autoscaler import Autoscaler, wake
from vastrpc.control.lifecycle.endpoints import Lifecycle
from vastrpc.control.lifecycle.reaper import Reaper
from vastrpc.control.lifecycle.rules import ENDPOINT_STATE_VALUES, WORKER_STATE_VALUES
from vastrpc.control.lifecycle.tiers import registered_tier
from vastrpc.control.logtail import LogFollower
from vastrpc.control.metrics import ControlMetrics
from vastrpc.control.rpcstatus import abort, unary
from vastrpc.control.snapshots import Snapshot, Snapshots
from vastrpc.control.stores.base import EndpointRow, WorkerRow
from vastrpc.control.transfer import BundleTransfer
from vastrpc.control.watches import AssignmentWatches, assignment_inputs

__all__ = ["WORKER_METHODS", "ControlService"]

log = logging.getLogger(__name__)

_PREFIX = "/vastrpc.api.v1.ControlService/"
# The methods a worker token admits: for its own worker, and within its endpoint (checked in the handlers).
WORKER_METHODS = frozenset(
    _PREFIX + m
    for m in (
        "RegisterWorker",
        "UpdateWorker",
        "Heartbeat",
        "HeartbeatStream",
        "WatchWorker",
        "DownloadBundle",
        "DownloadFiles",
    )
)
# How often a watching client is recorded as seen (the TTL counts from the last time).
CLIENT_SEEN_INTERVAL = 10.0
# On a store shared by several services: the leader's reaper sees only its own watchers, so
# the others record theirs this often, and each watch reads the state again as often.
SHARED_CLIENT_SEEN_INTERVAL = 1.0
# A quiet endpoint watch carries this every ``watch_keepalive`` s: the client knows it still flows.
_KEEPALIVE = control_pb2.WatchEndpointResponse(keepalive=True)
# GetWorkerLogs never returns more than this, whatever was asked: it must fit one message.
MAX_LOG_BYTES = 4 << 20


class ControlService(Heartbeats, BundleTransfer, control_pb2_grpc.ControlServiceServicer):
    """Serves vastrpc.api.v1.ControlService.

    Args:
        lifecycle: The decisions about endpoints and workers.
        api_key: The key that admits every method.
        reaper: The TTL reaper, told about every endpoint watch that opens and ends;
            None when no reaper runs.
        autoscaler: The autoscaler, which WakeEndpoint goes through (a wake counts as
            activity); None when none runs.
        metrics: The service's Prometheus metrics, fed by registrations and worker reports;
            None when it serves none (its workers then serve none either).
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        api_key: str,
        reaper: Reaper | None = None,
        autoscaler: Autoscaler | None = None,
        metrics: ControlMetrics | None = None,
        watch_keepalive: float = 10.0,
    ) -> None:
        if not api_key:
            raise ValueError("the control service needs a non-empty API key")
        self.lifecycle = lifecycle
        self.reaper = reaper
        self.autoscaler = autoscaler
        self.metrics = metrics
        self.watch_keepalive = watch_keepalive
        self.store = lifecycle.store
        self.blobs = lifecycle.blobs
        self._api_key = api_key
        # The autoscaling settings of each revision a watch reported, by revision id.
        self._autoscaling: dict[str, control_pb2.AutoscalingSpec] = {}
        # Read again at least this often while nothing wakes the watches: on a shared store
        # as often as each watch did before snapshots were shared.
        self.snapshots = Snapshots(
            self.store, lifecycle.change_version, self._watch_update, max_age=SHARED_CLIENT_SEEN_INTERVAL
        )
        lifecycle.beats.peek = self.snapshots.peek  # heartbeats answered from the watches' snapshot
        self.assignments = AssignmentWatches(self.snapshots, lifecycle.change_event, lambda: lifecycle.shutting_down)

    # -- auth -------------------------------------------------------------------------

    def authorize(self, method: str, token: str) -> bool:
        """The AuthInterceptor's check: the API key admits all, a worker token the worker methods."""
        if tokens_equal(token, self._api_key):
            return True
        return method in WORKER_METHODS and self.lifecycle.authorize_worker_token(token) is not None

    def _endpoint_token(self, endpoint: EndpointRow) -> str:
        """The token the endpoint's workers require: derived from the stored nonce and the API key.

        The state store holds only the nonce, so a copy of it alone admits no call.
        """
        return hmac.new(self._api_key.encode(), f"endpoint:{endpoint.token}".encode(), hashlib.sha256).hexdigest()

    def _caller_worker(self, context: grpc.aio.ServicerContext) -> WorkerRow | None:
        """The worker whose token the call presents; None for the API key (which may act on any)."""
        token = token_from_metadata(context.invocation_metadata())
        if tokens_equal(token, self._api_key):
            return None
        worker = self.lifecycle.authorize_worker_token(token)
        if worker is None:  # the AuthInterceptor let it in, and the worker is gone since
            raise AuthenticationError("this worker token belongs to no worker any more")
        return worker

    def _check_worker(self, context: grpc.aio.ServicerContext, worker_id: str) -> WorkerRow | None:
        worker = self._caller_worker(context)
        if worker is not None and worker.id != worker_id:
            raise AuthenticationError(f"this worker token does not belong to worker {worker_id!r}")
        return worker

    # -- deployments ------------------------------------------------------------------

    @unary
    async def RegisterDeployment(
        self, request: control_pb2.RegisterDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.RegisterDeploymentResponse:
        reg = self.lifecycle.register(request.spec)
        if self.metrics is not None:
            self.metrics.update_registered(reg.tier)
        return control_pb2.RegisterDeploymentResponse(
            deployment_id=reg.deployment_id,
            endpoint_id=reg.endpoint_id,
            revision_id=reg.revision_id,
            tier=reg.tier,  # type: ignore[arg-type]
            upload_required=reg.upload_required,
        )

    @unary
    async def Provision(
        self, request: control_pb2.ProvisionRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ProvisionResponse:
        started = await self.lifecycle.provision(request.endpoint_id, request.revision_id)
        warnings = await self.lifecycle.provision_warnings(request.revision_id)
        return control_pb2.ProvisionResponse(workers_started=started, warnings=warnings)

    async def WatchEndpoint(
        self, request: control_pb2.WatchEndpointRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.WatchEndpointResponse]:
        endpoint_id = request.endpoint_id
        if self.store.get_endpoint(endpoint_id) is None:
            await abort(context, NotFoundError(f"no endpoint {endpoint_id!r}"))
        last_sent = b""
        # A delta watch: the snapshot the client last got, which the next update starts from.
        had: Snapshot | None = None
        last_seen = sent_at = 0.0
        seen_interval = SHARED_CLIENT_SEEN_INTERVAL if self.store.shared else CLIENT_SEEN_INTERVAL
        # An open watch is a connected client: it keeps the endpoint from its TTL teardown.
        if self.reaper is not None:
            self.reaper.client_connected(endpoint_id)
        self.snapshots.watch_opened(endpoint_id)
        try:
            # Runs until the client cancels (CancelledError ends the generator).
            while True:
                # Taken before reading, so a change made while we read still wakes us.
                changed = self.lifecycle.change_event(endpoint_id)
                now = time.monotonic()
                if now - last_seen >= seen_interval:
                    self.lifecycle.client_seen(endpoint_id)
                    last_seen = now
                snapshot = await self.snapshots.current(endpoint_id)
                if snapshot is None:
                    return
                # Read and encoded once per change for every watch of the endpoint, and sent as
                # those bytes (the service's serializer passes bytes through: ``vastrpc._packed``).
                if request.deltas and had is not None:
                    data = self.snapshots.delta(snapshot, had) or last_sent
                else:
                    _, data = self.snapshots.update(snapshot)
                if data != last_sent:
                    yield data  # type: ignore[misc]
                    last_sent, sent_at, had = data, time.monotonic(), snapshot
                elif time.monotonic() - sent_at >= self.watch_keepalive:
                    yield _KEEPALIVE
                    sent_at = time.monotonic()
                try:
                    async with asyncio.timeout(min(seen_interval, self.watch_keepalive)):
                        await changed.wait()
                except TimeoutError:
                    pass
                if self.lifecycle.shutting_down:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the control service is stopping")
        finally:
            self.snapshots.watch_closed(endpoint_id)
            # However the watch ends (client gone, cancelled, service stopping), the TTL counts from now.
            if self.reaper is not None:
                self.reaper.client_disconnected(endpoint_id)

    def _watch_update(self, snapshot: Snapshot) -> control_pb2.WatchEndpointResponse:
        endpoint = snapshot.endpoint
        return control_pb2.WatchEndpointResponse(
            endpoint_id=endpoint.id,
            state=ENDPOINT_STATE_VALUES[endpoint.state],  # type: ignore[arg-type]
            revision_id=endpoint.live_revision_id or "",
            workers=[_worker_pb(w) for w in snapshot.workers],
            endpoint_token=self._endpoint_token(endpoint),
            failure=_endpoint_failure(endpoint),
            desired_workers=endpoint.desired_workers,
            autoscaling=self._live_autoscaling(endpoint),
        )

    def _live_autoscaling(self, endpoint: EndpointRow) -> control_pb2.AutoscalingSpec:
        """The live revision's autoscaling settings (a revision's spec never changes: parsed once)."""
        revision_id = endpoint.live_revision_id or ""
        cached = self._autoscaling.get(revision_id)
        if cached is None:
            revision = self.store.get_revision(revision_id) if revision_id else None
            spec = control_pb2.DeploymentSpec.FromString(revision.spec) if revision else control_pb2.DeploymentSpec()
            if len(self._autoscaling) >= 1024:
                self._autoscaling.clear()
            cached = self._autoscaling[revision_id] = spec.autoscaling
        return cached

    # -- workers ----------------------------------------------------------------------

    @unary
    async def RegisterWorker(
        self, request: control_pb2.RegisterWorkerRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.RegisterWorkerResponse:
        self._check_worker(context, request.worker_id)
        worker, endpoint, spec = self.lifecycle.register_worker(request.worker_id, request.pid)
        log.info("worker %s registered (pid %d)", worker.id, request.pid)
        return control_pb2.RegisterWorkerResponse(
            endpoint_id=endpoint.id,
            revision_id=worker.revision_id,
            spec=self._spec_for_worker(spec, context),
            endpoint_token=self._endpoint_token(endpoint),
            heartbeat_interval=self.lifecycle.heartbeat_interval,
            serve_metrics=self.metrics is not None,
        )

    def _spec_for_worker(self, spec: bytes, context: grpc.aio.ServicerContext) -> control_pb2.DeploymentSpec:
        """The stored spec with its secrets resealed for the calling worker's own token."""
        message = control_pb2.DeploymentSpec.FromString(spec)
        token = token_from_metadata(context.invocation_metadata())
        sealed = reseal(self._api_key, token, message.image.sealed_secrets)
        message.image.sealed_secrets.clear()
        message.image.sealed_secrets.update(sealed)
        return message

    async def WatchWorker(
        self, request: control_pb2.WatchWorkerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.WatchWorkerResponse]:
        try:
            self._check_worker(context, request.worker_id)
            worker = self.lifecycle.worker(request.worker_id)
        except VastrpcError as exc:
            await abort(context, exc)
        endpoint_id = worker.endpoint_id
        last: tuple[str, bool] | None = None
        self.snapshots.watch_opened(endpoint_id)
        # Woken when this worker's assignment may have changed, not at every change of the endpoint.
        watch = self.assignments.open(endpoint_id, request.worker_id)
        try:
            while not self.lifecycle.shutting_down:
                watch.event.clear()  # before reading: a change while we read wakes us again
                # The assignment follows from the worker's state and revision and the endpoint's
                # state and live revision alone: while those stand (another worker changed), it does
                # too, and the shared snapshot tells so without reading the store for each worker.
                snapshot = await self.snapshots.current(endpoint_id)
                row = snapshot.worker(request.worker_id) if snapshot else None
                now = assignment_inputs(snapshot, row) if snapshot and row else None
                if now is None or now != watch.inputs:
                    watch.inputs = now
                    revision_id, stop, spec = self.lifecycle.assignment(request.worker_id)
                    if (revision_id, stop) != last:
                        last = (revision_id, stop)
                        endpoint = self.store.get_endpoint(endpoint_id)
                        yield control_pb2.WatchWorkerResponse(
                            revision_id=revision_id,
                            spec=self._spec_for_worker(spec, context),
                            endpoint_token=self._endpoint_token(endpoint) if endpoint else "",
                            stop=stop,
                        )
                        if stop:
                            return
                await watch.event.wait()
        finally:
            self.assignments.close(watch)
            self.snapshots.watch_closed(endpoint_id)

    @unary
    async def UpdateWorker(
        self, request: control_pb2.UpdateWorkerRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.UpdateWorkerResponse:
        worker = self._check_worker(context, request.worker_id)
        if worker is not None and request.revision_id:
            self.lifecycle.check_worker_revision(worker, request.revision_id)
        self.lifecycle.update_worker(
            request.worker_id,
            request.state,
            revision_id=request.revision_id,
            address=request.address,
            score=request.score,
            capacity=request.capacity,
            failure=request.failure if request.HasField("failure") else None,
            published_ports=_ports_json(request.published_ports),
        )
        if self.metrics is not None:
            self.metrics.worker_metrics_address(request.worker_id, request.metrics_address)
        return control_pb2.UpdateWorkerResponse()

    # -- clients ----------------------------------------------------------------------

    @unary
    async def WakeEndpoint(
        self, request: control_pb2.WakeEndpointRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.WakeEndpointResponse:
        if not request.endpoint_id:
            raise DefinitionError("WakeEndpoint needs the endpoint_id")
        if self.autoscaler is not None:
            started = await self.autoscaler.wake(request.endpoint_id)
        else:
            started = await wake(self.store, self.lifecycle, request.endpoint_id)
        # A client with calls to make is a client heard from (the TTL counts from the last one).
        self.lifecycle.client_seen(request.endpoint_id)
        return control_pb2.WakeEndpointResponse(workers_started=started)

    @unary
    async def HoldSession(
        self, request: control_pb2.HoldSessionRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.HoldSessionResponse:
        if not (request.endpoint_id and request.session_id and request.worker_id):
            raise DefinitionError("HoldSession needs the endpoint_id, session_id and worker_id")
        worker = self.store.get_worker(request.worker_id)
        active = worker is not None and worker.endpoint_id == request.endpoint_id and worker.state == "ready"
        ttl = request.ttl_seconds if active and math.isfinite(request.ttl_seconds) else 0.0
        self.lifecycle.sessions.hold(request.session_id, request.endpoint_id, request.worker_id, ttl)
        self.lifecycle.client_seen(request.endpoint_id)
        return control_pb2.HoldSessionResponse(worker_active=active)

    # -- operations -------------------------------------------------------------------

    @unary
    async def ListDeployments(
        self, request: control_pb2.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListDeploymentsResponse:
        self.lifecycle.beats.flush()  # the workers' activity as their latest heartbeats say
        deployments = self.store.list_deployments()
        if request.name:
            deployments = [d for d in deployments if d.name == request.name]
        response = control_pb2.ListDeploymentsResponse()
        for deployment in deployments:
            item = response.deployments.add(
                deployment_id=deployment.id, name=deployment.name, created_at=deployment.created_at
            )
            for endpoint in self.store.list_endpoints(deployment.id):
                rows = self.store.list_workers(endpoint_id=endpoint.id, exclude_states=("stopped",))
                entry = item.endpoints.add(
                    endpoint_id=endpoint.id,
                    tag=endpoint.tag,
                    state=ENDPOINT_STATE_VALUES[endpoint.state],  # type: ignore[arg-type]
                    revision_id=endpoint.live_revision_id or "",
                    workers=[_worker_pb(w) for w in rows],
                    failure=_endpoint_failure(endpoint),
                    desired_workers=endpoint.desired_workers,
                    last_client_seen=endpoint.last_client_seen,
                    worker_activity={
                        w.id: control_pb2.WorkerActivity(
                            calls_in_flight=w.calls_in_flight,
                            calls_queued=w.calls_queued,
                            calls_started=w.calls_started,
                            started_at=w.created_at,
                        )
                        for w in rows
                    },
                )
                revision = self.store.get_revision(endpoint.live_revision_id) if endpoint.live_revision_id else None
                if revision is not None:
                    spec = control_pb2.DeploymentSpec.FromString(revision.spec)
                    entry.autoscaling.CopyFrom(spec.autoscaling)
                    entry.ttl = spec.ttl
                    entry.version_label = spec.version_label
                    entry.live_revision_tier = registered_tier(  # type: ignore[assignment]
                        self.store.list_revisions(endpoint.id), revision
                    )
        return response

    @unary
    async def GetWorkerLogs(
        self, request: control_pb2.GetWorkerLogsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.GetWorkerLogsResponse:
        worker = self.store.get_worker(request.worker_id)
        if worker is None:
            raise NotFoundError(f"no worker {request.worker_id!r}")
        path = Path(worker.log_path or self.lifecycle.provider.log_path(worker.id))
        limit = min(request.tail_bytes or MAX_LOG_BYTES, MAX_LOG_BYTES)
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - limit))
                data = f.read(limit)
        except FileNotFoundError:
            data = b""
        return control_pb2.GetWorkerLogsResponse(text=data.decode("utf-8", "replace"))

    async def FollowLogs(
        self, request: control_pb2.FollowLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.FollowLogsResponse]:
        try:
            follower = LogFollower(
                self.store,
                self.lifecycle.provider.log_path,
                worker_id=request.worker_id,
                name=request.name,
                tag=request.tag,
            )
        except VastrpcError as exc:
            await abort(context, exc)
        tail = request.tail_lines if request.HasField("tail_lines") else None

        def stopping() -> bool:
            return self.lifecycle.shutting_down

        async for worker_id, text in follower.stream(tail, request.follow, stopping):
            yield control_pb2.FollowLogsResponse(worker_id=worker_id, text=text.decode("utf-8", "replace"))
        if stopping():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the control service is stopping")

    @unary
    async def Teardown(
        self, request: control_pb2.TeardownRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.TeardownResponse:
        if not request.name:
            raise DefinitionError("Teardown needs the deployment name")
        removed, stopped = await self.lifecycle.teardown(request.name, request.tag)
        return control_pb2.TeardownResponse(endpoints_removed=removed, workers_stopped=stopped)

    @unary
    async def JoinEndpoint(
        self, request: control_pb2.JoinEndpointRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.JoinEndpointResponse:
        if not request.name:
            raise DefinitionError("JoinEndpoint needs the deployment name")
        worker, token = self.lifecycle.join(request.name, request.tag)
        return control_pb2.JoinEndpointResponse(worker_id=worker.id, worker_token=token, endpoint_id=worker.endpoint_id)


def _endpoint_failure(endpoint: EndpointRow) -> common_pb2.Failure | None:
    if not (endpoint.failure_step or endpoint.failure_message):
        return None
    return common_pb2.Failure(
        step=endpoint.failure_step, message=endpoint.failure_message, log_tail=endpoint.failure_log_tail
    )


def _worker_pb(worker: WorkerRow) -> common_pb2.Worker:
    failure = None
    if worker.failure_step or worker.failure_message:
        failure = common_pb2.Failure(
            step=worker.failure_step, message=worker.failure_message, log_tail=worker.failure_log_tail
        )
    return common_pb2.Worker(
        worker_id=worker.id,
        endpoint_id=worker.endpoint_id,
        revision_id=worker.revision_id,
        state=WORKER_STATE_VALUES[worker.state],  # type: ignore[arg-type]
        address=worker.address,
        score=worker.score,
        capacity=worker.capacity,
        pid=worker.pid,
        failure=failure,
        last_heartbeat=worker.last_heartbeat,
        published_ports=_ports_pb(worker.published_ports),
        gpus=worker.gpu_indices(),
    )


def _ports_json(ports: Iterable[common_pb2.PublishedPort]) -> str:
    """A worker's reported published ports as its row keeps them (``WorkerRow.published_ports``)."""
    items = [{"port": p.port, "protocol": protocol_name(p.protocol), "address": p.address} for p in ports]
    return json.dumps(items, separators=(",", ":")) if items else ""


def _ports_pb(text: str) -> list[common_pb2.PublishedPort]:
    """The published ports of a worker row, as the contract carries them."""
    if not text:
        return []
    return [
        common_pb2.PublishedPort(port=p["port"], protocol=PORT_PROTOCOL_VALUES[p["protocol"]], address=p["address"])
        for p in json.loads(text)
    ]
