"""How a new revision reaches running workers: tier 1 relabels, tier 2 loads in place, tier 3 restarts in the slot."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from vastrpc._errors import AuthenticationError, DeploymentError
from vastrpc.control.lifecycle.leadership import JOINED
from vastrpc.control.lifecycle.rules import hash_token
from vastrpc.control.providers.base import Provider, start_options
from vastrpc.control.stores.base import ACTIVE_WORKER_STATES, RevisionRow, Store, WorkerRow

log = logging.getLogger(__name__)


class Rollouts:
    """The update tiers' part of Lifecycle (a mixin: Lifecycle provides what is declared below)."""

    if TYPE_CHECKING:
        store: Store
        provider: Provider
        stop_grace: float
        control_address: str
        _shutting_down: bool

        def changed(self, endpoint_id: str) -> None: ...
        def change_event(self, endpoint_id: str) -> asyncio.Event: ...
        def worker(self, worker_id: str) -> WorkerRow: ...
        def _retire(self, workers: Iterable[WorkerRow], *, wait: bool) -> list[asyncio.Task[None]]: ...
        def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
        async def _scale(self, endpoint_id: str, revision: RevisionRow, desired: int) -> int: ...
        async def _start_workers(self, endpoint_id: str, revision: RevisionRow, count: int) -> int: ...
        def _fail_worker(
            self, worker: WorkerRow, step: str, message: str, *, log_tail: str = "", fail_endpoint: bool = True
        ) -> None: ...

    async def _switch_settings(self, endpoint_id: str, revision: RevisionRow, desired: int) -> int:
        """Tier 1: the workers already run this code and environment; relabel them and rescale."""
        with self.store.transaction():
            for worker in self.store.list_workers(endpoint_id=endpoint_id, states=ACTIVE_WORKER_STATES):
                self.store.update_worker(worker.id, revision_id=revision.id)
            self.store.update_endpoint(endpoint_id, live_revision_id=revision.id)
        return await self._scale(endpoint_id, revision, desired)

    def _go_live(self, endpoint_id: str, revision: RevisionRow, desired: int, keep: list[WorkerRow]) -> None:
        """Make ``revision`` the endpoint's live one (deploying), retiring active workers not in ``keep``."""
        kept = {w.id for w in keep}
        with self.store.transaction():
            self.store.update_endpoint(
                endpoint_id,
                live_revision_id=revision.id,
                desired_workers=desired,
                state="deploying",
                failure_step="",
                failure_message="",
                failure_log_tail="",
            )
            self._retire(
                [
                    w
                    for w in self.store.list_workers(endpoint_id=endpoint_id, exclude_states=("stopped",))
                    if w.id not in kept
                ],
                wait=False,
            )
        self.changed(endpoint_id)

    def _ready_workers(self, endpoint_id: str, desired: int) -> list[WorkerRow]:
        """Up to ``desired`` of the ready workers this service runs (joined ones are not in its count)."""
        ready = self.store.list_workers(endpoint_id=endpoint_id, states=("ready",))
        return sorted((w for w in ready if w.owner != JOINED), key=lambda w: w.created_at)[:desired]

    async def _update_in_place(self, endpoint_id: str, revision: RevisionRow, desired: int) -> int:
        """Tier 2: ready workers load the new revision beside the old one and switch over; ids stay.

        The workers learn of it from their WatchWorker stream (``assignment``); each reports
        ready with the new revision once its new serving process has entered its contexts
        and benchmarked, then drains the old one. Workers not ready yet are replaced.
        """
        keep = self._ready_workers(endpoint_id, desired)
        # Workers joined by hand switch in place too; a tier 3 update (below) stops them instead.
        joined = [w for w in self.store.list_workers(endpoint_id=endpoint_id, states=("ready",)) if w.owner == JOINED]
        self._go_live(endpoint_id, revision, desired, keep + joined)
        return await self._start_workers(endpoint_id, revision, desired - len(keep))

    async def _restart_in_place(self, endpoint_id: str, revision: RevisionRow, desired: int) -> int:
        """Tier 3: ready workers restart into the new environment in their slots, one at a time.

        Rolling one at a time keeps the others serving; a lone worker's callers wait for it
        (the client holds calls until a worker is ready) rather than fail.
        """
        keep = self._ready_workers(endpoint_id, desired)
        self._go_live(endpoint_id, revision, desired, keep)
        started = await self._start_workers(endpoint_id, revision, desired - len(keep))
        self._spawn(self._roll(endpoint_id, revision, keep))
        return started

    async def _roll(self, endpoint_id: str, revision: RevisionRow, workers: list[WorkerRow]) -> None:
        for worker in workers:
            endpoint = self.store.get_endpoint(endpoint_id)
            if endpoint is None or endpoint.live_revision_id != revision.id or endpoint.state in ("failed", "stopped"):
                return  # superseded by a newer revision, failed, or torn down
            current = self.store.get_worker(worker.id)
            if current is None or current.state in ("stopped", "failed"):
                continue
            token = secrets.token_urlsafe(32)
            # pid 0 first: the old process's exit is then not taken for a crash of the new one.
            self.store.update_worker(
                worker.id,
                state="starting",
                revision_id=revision.id,
                pid=0,
                address="",
                published_ports="",
                token_hash=hash_token(token),
            )
            self.changed(endpoint_id)
            await self.provider.stop_worker(worker.id, self.stop_grace)
            if self._shutting_down:
                return
            try:
                pid = await self.provider.start_worker(
                    worker.id, token, self.control_address, **start_options(revision.spec)
                )
            except OSError as exc:
                self._fail_worker(self.worker(worker.id), "starting", f"cannot restart the worker: {exc}")
                return
            except DeploymentError as exc:  # e.g. no node meets the new search filters
                self._fail_worker(self.worker(worker.id), exc.step or "starting", exc.reason)
                return
            gpus = ",".join(map(str, self.provider.worker_gpus(worker.id)))
            if not self.worker(worker.id).pid:
                self.store.update_worker(worker.id, pid=pid, gpus=gpus)
            else:
                self.store.update_worker(worker.id, gpus=gpus)
            log.info("restarted worker %s into revision %s (pid %d)", worker.id, revision.id, pid)
            await self._wait_worker_settled(endpoint_id, worker.id, revision.id)

    async def _wait_worker_settled(self, endpoint_id: str, worker_id: str, revision_id: str) -> None:
        """Until the worker is ready on ``revision_id``, or failed or stopped."""
        while True:
            changed = self.change_event(endpoint_id)
            w = self.store.get_worker(worker_id)
            if w is None or w.state in ("stopped", "failed") or (w.state == "ready" and w.revision_id == revision_id):
                return
            await changed.wait()

    def assignment(self, worker_id: str) -> tuple[str, bool, bytes]:
        """What a worker should serve: ``(revision_id, stop, spec)``.

        The endpoint's live revision when it shares the worker's environment (tiers 1 and 2
        are taken in place) and did not fail; otherwise the worker's own revision, until the
        control service restarts it (tier 3) or a new deploy replaces it.
        """
        worker = self.worker(worker_id)
        endpoint = self.store.get_endpoint(worker.endpoint_id)
        stop = worker.state in ("stopped", "failed") or endpoint is None or endpoint.state == "stopped"
        current = self.store.get_revision(worker.revision_id)
        assert current is not None
        if (
            endpoint is not None
            and endpoint.state != "failed"
            and endpoint.live_revision_id
            and endpoint.live_revision_id != current.id
        ):
            live = self.store.get_revision(endpoint.live_revision_id)
            if live is not None and live.environment_digest == current.environment_digest:
                return live.id, stop, live.spec
        return current.id, stop, current.spec

    def reachable_revisions(self, worker: WorkerRow) -> list[RevisionRow]:
        """The revisions a worker's token may act on: its own and the newer ones of its endpoint.

        A worker moves forward only (tier 2 loads the live revision beside its own, tier 3
        restarts it into one), and a newer deploy may supersede the one it was told of
        before it asked; an older revision or another endpoint's is never its business.
        A stopped or failed worker reaches none.
        """
        if worker.state in ("stopped", "failed"):
            return []
        revisions = self.store.list_revisions(worker.endpoint_id)
        ids = [r.id for r in revisions]
        return revisions[ids.index(worker.revision_id) :] if worker.revision_id in ids else []

    def check_worker_bundle(self, worker: WorkerRow, digest: str) -> None:
        """Refuse a worker a bundle that no revision it may reach uses (AuthenticationError)."""
        if not any(r.bundle_digest == digest for r in self.reachable_revisions(worker)):
            raise AuthenticationError(
                f"worker {worker.id} may download only the bundles of its endpoint's revisions it serves or "
                f"moves to; bundle {digest[:12]!r} is none of them"
            )

    def check_worker_revision(self, worker: WorkerRow, revision_id: str) -> None:
        """Refuse a worker's report about another endpoint's revision (AuthenticationError).

        Reports stay scoped to the endpoint, not to ``reachable_revisions``: a draining
        serving process may still report on the revision the worker just left.
        """
        revision = self.store.get_revision(revision_id)
        if revision is not None and revision.endpoint_id != worker.endpoint_id:
            raise AuthenticationError(
                f"worker {worker.id} may report only on revisions of its own endpoint; {revision_id!r} is not one"
            )
