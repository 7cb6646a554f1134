"""What the control service does when workers are lost: fail them, replace them, or wait for capacity."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from vastrpc.control.lifecycle.beats import HeartbeatBatch
from vastrpc.control.lifecycle.leadership import JOINED, orphan_loss
from vastrpc.control.lifecycle.rules import exit_message, read_log_tail
from vastrpc.control.providers.base import Provider
from vastrpc.control.stores.base import ACTIVE_WORKER_STATES, Store, WorkerRow

log = logging.getLogger(__name__)


class Losses:
    """Lost and failed workers, failed endpoints, and waiting for capacity (a mixin of Lifecycle)."""

    if TYPE_CHECKING:
        store: Store
        provider: Provider
        owner: str
        heartbeat_interval: float
        beats: HeartbeatBatch
        _shutting_down: bool

        def changed(self, endpoint_id: str) -> None: ...
        def _retire(self, workers: Iterable[WorkerRow], *, wait: bool) -> list[asyncio.Task[None]]: ...
        def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
        async def _stop_process(self, worker: WorkerRow) -> None: ...

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds without a heartbeat after which a worker is taken for lost (hung, frozen, unreachable)."""
        return max(10.0, 5 * self.heartbeat_interval)

    def check_heartbeats(self, now: float) -> list[str]:
        """Declare lost every worker whose heartbeats stopped: failed, stopped, and replaced by the autoscaler."""
        self.beats.flush()  # a beat not written yet counts
        lost = []
        for worker in self.store.list_workers(states=ACTIVE_WORKER_STATES):
            silent = now - worker.last_heartbeat
            message = f"no heartbeat for {silent:.0f}s (limit {self.heartbeat_timeout:g}s): hung, frozen or unreachable"
            local = not self.provider.remote_workers  # a worker's pid is a process of this host
            timeout = self.heartbeat_timeout
            if self.store.shared and (orphaned := orphan_loss(worker, now, timeout, me=self.owner, local=local)):
                message = orphaned  # another service's worker left behind when that service died
            elif worker.last_heartbeat <= 0 or silent <= self.heartbeat_timeout:
                continue
            if worker.state == "ready":
                self._fail_worker(worker, "heartbeat", message, fail_endpoint=False)
                # On a shared store silence is mostly the death of the worker's control service.
                self._worker_lost(worker, message, replace=self.store.shared)
            else:
                self._fail_worker(worker, "heartbeat", message, lost=True)
            self._spawn(self._stop_process(worker))
            lost.append(worker.id)
        return lost

    async def worker_exited(self, worker_id: str, pid: int, returncode: int, reason: str = "") -> None:
        """The provider saw a worker's process end; ``reason``, when it knows why (a node lost)."""
        worker = self.store.get_worker(worker_id)
        if worker is None or worker.state in ("stopped", "failed"):
            return
        if worker.pid != pid:
            return  # an earlier process of a worker restarted in its slot (tier 3)
        if self._shutting_down or worker.state == "draining":
            self.store.update_worker(worker_id, state="stopped")
            self.changed(worker.endpoint_id)
            return
        message = reason or exit_message(returncode)
        if worker.state == "ready":
            self._fail_worker(worker, "serving", message, fail_endpoint=False)
            self._worker_lost(worker, message)
        else:
            self._fail_worker(worker, worker.state, message, lost=True)

    def _worker_lost(self, worker: WorkerRow, message: str, *, replace: bool = False) -> None:
        """A ready worker went away; the autoscaler starts a replacement at its next look.

        The endpoint stays ready while another worker of its revision is; with none left it
        waits for capacity (a node gone, processes killed): the autoscaler places workers
        again, with backoff, until one serves. With ``replace`` (workers lost with the control
        service that ran them, not by a fault of theirs) it goes back to deploying instead.
        """
        endpoint = self.store.get_endpoint(worker.endpoint_id)
        if endpoint is None or endpoint.live_revision_id != worker.revision_id or endpoint.state != "ready":
            return
        if worker.owner == JOINED:
            return  # not one the endpoint counts on: the workers the service runs are as they were
        ready = self.store.list_workers(endpoint_id=endpoint.id, revision_id=worker.revision_id, states=("ready",))
        if not ready and replace:
            self.store.update_endpoint(endpoint.id, state="deploying")
        elif not ready:
            self._wait_for_capacity(endpoint.id, "serving", f"its last worker {worker.id} was lost: {message}")

    def _wait_for_capacity(self, endpoint_id: str, step: str, reason: str) -> None:
        """The endpoint lost its workers and waits to place new ones; ``reason`` says for what."""
        endpoint = self.store.get_endpoint(endpoint_id)
        if endpoint is None or endpoint.state in ("stopped", "failed"):
            return
        if (endpoint.state, endpoint.failure_step, endpoint.failure_message) == ("waiting", step, reason):
            return  # another placement try that found no room: nothing new to write or tell the watches
        log.warning("endpoint %s waits for capacity (%s): %s", endpoint_id, step, reason)
        self.store.update_endpoint(
            endpoint_id, state="waiting", failure_step=step, failure_message=reason, failure_log_tail=""
        )
        self.changed(endpoint_id)

    def _fail_worker(
        self,
        worker: WorkerRow,
        step: str,
        message: str,
        *,
        log_tail: str = "",
        fail_endpoint: bool = True,
        lost: bool = False,
    ) -> None:
        """Mark the worker failed and (``fail_endpoint``) its endpoint too.

        With ``lost`` (its process went away rather than reporting a failed step) an endpoint
        waiting for capacity waits on: its node may have gone again.
        """
        log_tail = log_tail or read_log_tail(worker.log_path)
        self.store.update_worker(
            worker.id, state="failed", failure_step=step, failure_message=message, failure_log_tail=log_tail
        )
        log.warning("worker %s failed at %s: %s", worker.id, step, message)
        # A worker joined by hand fails alone: its host or setup is not the deployment's fault.
        if fail_endpoint and worker.owner != JOINED:
            endpoint = self.store.get_endpoint(worker.endpoint_id)
            if lost and endpoint is not None and endpoint.state == "waiting":
                self._wait_for_capacity(endpoint.id, step, f"a worker starting in its place was lost: {message}")
            else:
                self._fail_endpoint(worker.endpoint_id, worker.revision_id, step, message, log_tail)
        self.changed(worker.endpoint_id)

    def _fail_endpoint(self, endpoint_id: str, revision_id: str, step: str, message: str, log_tail: str) -> None:
        """Fail the endpoint if ``revision_id`` is what it deploys or serves, and stop that revision's workers."""
        endpoint = self.store.get_endpoint(endpoint_id)
        if endpoint is None or endpoint.live_revision_id != revision_id or endpoint.state in ("stopped", "failed"):
            return
        with self.store.transaction():
            self.store.update_endpoint(
                endpoint_id, state="failed", failure_step=step, failure_message=message, failure_log_tail=log_tail
            )
            self._retire(
                self.store.list_workers(endpoint_id=endpoint_id, revision_id=revision_id, states=ACTIVE_WORKER_STATES),
                wait=False,
            )
        log.warning("endpoint %s failed at %s: %s", endpoint_id, step, message)
        self.changed(endpoint_id)
