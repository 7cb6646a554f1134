"""Teardown of endpoints, and what the control service does with its workers when it starts and stops."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from vastrpc._errors import NotFoundError
from vastrpc._process import pid_alive
from vastrpc.api.v1 import control_pb2
from vastrpc.control.lifecycle.leadership import JOINED, owner_is_gone
from vastrpc.control.providers.base import Provider
from vastrpc.control.stores.base import Store, WorkerRow

log = logging.getLogger(__name__)


class Stopping:
    """Teardown, recovery and shutdown: Lifecycle's part that stops things (a mixin, like Rollouts)."""

    if TYPE_CHECKING:
        store: Store
        provider: Provider
        stop_grace: float
        owner: str
        _locks: defaultdict[str, asyncio.Lock]
        _events: dict[str, asyncio.Event]
        _foreign: dict[str, int]
        _background: set[asyncio.Task[None]]
        _shutting_down: bool

        def changed(self, endpoint_id: str) -> None: ...
        def _retire(self, workers: Iterable[WorkerRow], *, wait: bool) -> list[asyncio.Task[None]]: ...
        def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
        async def _stop_process(self, worker: WorkerRow) -> None: ...

    async def teardown(self, name: str, tag: str = "") -> tuple[int, int]:
        """Stop a deployment's endpoints (one tag, or all) and their workers; returns (endpoints, workers)."""
        deployment = self.store.get_deployment_by_name(name)
        if deployment is None:
            raise NotFoundError(f"no deployment named {name!r}")
        endpoints = [e for e in self.store.list_endpoints(deployment.id) if not tag or e.tag == tag]
        if tag and not endpoints:
            raise NotFoundError(f"deployment {name!r} has no tag {tag!r}")
        removed = stopped = 0
        tasks: list[asyncio.Task[None]] = []
        for endpoint in endpoints:
            async with self._locks[endpoint.id], self.store.endpoint_lock(endpoint.id):
                workers = self.store.list_workers(endpoint_id=endpoint.id)
                # Also workers already marked stopped whose processes are still on their way out.
                doomed = [w for w in workers if w.state != "stopped" or self.provider.is_running(w.id)]
                with self.store.transaction():
                    if endpoint.state != "stopped":
                        removed += 1
                        self.store.update_endpoint(endpoint.id, state="stopped")
                    stopped += sum(1 for w in workers if w.state != "stopped")
                    tasks += self._retire(doomed, wait=True)
                    self._forget_secrets(endpoint.id)
                # Committed: now no copy of the stripped secrets may linger in the store's files.
                self.store.scrub()
                self.changed(endpoint.id)
        if tasks:
            await asyncio.gather(*tasks)
        log.info("tore down %s%s: %d endpoint(s), %d worker(s)", name, f":{tag}" if tag else "", removed, stopped)
        return removed, stopped

    def _forget_secrets(self, endpoint_id: str) -> None:
        """A torn-down endpoint keeps no secret, even sealed: a redeploy sends them again."""
        for revision in self.store.list_revisions(endpoint_id):
            spec = control_pb2.DeploymentSpec.FromString(revision.spec)
            if spec.image.sealed_secrets:
                spec.image.ClearField("sealed_secrets")
                self.store.set_revision_spec(revision.id, spec.SerializeToString(deterministic=True))

    def recover(self) -> None:
        """After a restart: workers of an earlier run whose process is gone are stopped.

        On a shared store, only the workers of this host's control service processes that
        are gone: other services' are theirs, and other hosts' the leader judges by heartbeats.
        """
        gone = []
        for worker in self.store.list_workers(exclude_states=("stopped",)):
            if worker.owner == JOINED:
                continue  # started by hand, maybe elsewhere: its pid means nothing here; heartbeats judge it
            if self.store.shared and owner_is_gone(worker.owner, me=self.owner) is not True:
                continue
            unregistered = worker.state == "starting" and worker.last_heartbeat <= 0
            if pid_alive(worker.pid) and not unregistered:
                self._foreign[worker.id] = worker.pid
                # Its GPUs stay its own: the provider gives them to no worker it starts.
                self.provider.adopt_worker(worker.id, worker.pid, worker.gpu_indices())
            else:
                gone.append(worker)
                if unregistered and worker.pid:
                    # It may have found the service down and be on its way out: a retry starts another.
                    self._foreign[worker.id] = worker.pid
                    self._spawn(self._stop_process(worker))
        with self.store.transaction():
            for worker in gone:
                self.store.update_worker(worker.id, state="stopped")
            for endpoint in self.store.list_endpoints():
                if endpoint.state != "ready" or not endpoint.live_revision_id:
                    continue
                if self.store.shared and all(w.endpoint_id != endpoint.id for w in gone):
                    continue  # another service may be scaling it
                ready = self.store.list_workers(
                    endpoint_id=endpoint.id, revision_id=endpoint.live_revision_id, states=("ready",)
                )
                if len(ready) < endpoint.desired_workers:
                    # The next Provision starts the missing workers (it counts live ones).
                    self.store.update_endpoint(endpoint.id, state="deploying")
        if gone:
            log.info("recovered: %d worker(s) of an earlier run are gone", len(gone))

    async def shutdown(self) -> None:
        """Stop every worker this service runs (the service is stopping)."""
        self._shutting_down = True
        # Watchers see the flag and end their streams instead of holding up the server's stop.
        for endpoint_id in list(self._events):
            self.changed(endpoint_id)
        running = [w for w in self.store.list_workers() if self.provider.is_running(w.id) or w.id in self._foreign]
        with self.store.transaction():
            for worker in running:
                if worker.state != "stopped":
                    self.store.update_worker(worker.id, state="stopped")
                    self.changed(worker.endpoint_id)
        # Workers adopted from an earlier run of the service are not our children: stop them by pid.
        foreign, self._foreign = self._foreign, {}
        await asyncio.gather(
            self.provider.stop_all(self.stop_grace),
            *(self.provider.stop_worker(wid, self.stop_grace, pid=pid) for wid, pid in foreign.items()),
        )
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=1)
