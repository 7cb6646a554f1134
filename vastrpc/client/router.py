"""Keeps an endpoint's ready workers current through the control service's watch, and routes calls to them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from vastrpc._errors import (
    ControlServiceError,
    DefinitionError,
    DeploymentError,
    OverloadedError,
    VastrpcError,
    WorkerUnavailableError,
)
from vastrpc._payload import CLOUDPICKLE, Payload, decode_result, encode_args
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.client.balancer import BALANCERS
from vastrpc.client.connection import CallNotDelivered, WorkerConnection
from vastrpc.client.control import ControlClient
from vastrpc.client.output import LineSplitter, RemoteOutput

log = logging.getLogger("vastrpc.client")

# How long a call waits for a ready worker before it fails.
_NO_WORKER_WAIT = 60.0


# Takes each line a function prints or logs during a call.
OutputHandler = Callable[[RemoteOutput], None]


@dataclass(frozen=True)
class CallInfo:
    """A call's result and where it ran.

    Attributes:
        value: What the function returned.
        worker_id: The worker that ran it.
        revision_id: The revision of the deployment that served it.
        seconds: Time from the call to its result, retries included.
    """

    value: Any
    worker_id: str
    revision_id: str
    seconds: float


class Router:
    """The client's view of one endpoint: its state, its ready workers, and a connection to each."""

    def __init__(
        self,
        control: ControlClient | None,
        endpoint_id: str,
        balancer: str = "least_expected_time",
        *,
        workers: list[WorkerConnection] | None = None,
    ) -> None:
        """Follow ``endpoint_id`` through the control service's watch; or, with no control
        service, route to a fixed list of ``workers`` (``vastrpc.testing``)."""
        self.control = control
        self.endpoint_id = endpoint_id
        try:
            self.balancer = BALANCERS[balancer]()
        except KeyError:
            raise DefinitionError(f"unknown balancer {balancer!r}; choose one of {', '.join(BALANCERS)}") from None
        self._waking: asyncio.Task[None] | None = None
        self.state: control_pb2.WatchEndpointResponse | None = None
        self.workers: dict[str, WorkerConnection] = {c.worker_id: c for c in workers or ()}
        self._changed = asyncio.Condition()
        self._watch_error: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._watch()) if control is not None else None

    async def _watch(self) -> None:
        assert self.control is not None
        delay = 0.2
        while True:
            try:
                async for update in self.control.watch(self.endpoint_id):
                    delay = 0.2
                    await self._apply(update)
                raise ControlServiceError("the control service ended the endpoint watch")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving from known workers while the control service is away
                async with self._changed:
                    self._watch_error = exc
                    self._changed.notify_all()
                log.debug("endpoint watch failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _apply(self, update: control_pb2.WatchEndpointResponse) -> None:
        # Every ready worker takes calls, whichever revision it serves: during an update the
        # old revision keeps serving until the new one is ready.
        ready = {w.worker_id: w for w in update.workers if w.state == common_pb2.WORKER_STATE_READY and w.address}
        failed = {w.worker_id for w in update.workers if w.state == common_pb2.WORKER_STATE_FAILED}
        for worker_id in list(self.workers):
            if worker_id in failed:
                # Declared lost (dead, hung, frozen): its calls in flight will never be answered,
                # so they fail now (and an idempotent one is retried elsewhere).
                asyncio.get_running_loop().create_task(self.workers.pop(worker_id).close())
            elif worker_id not in ready:
                # Draining or stopped: calls in flight finish on their own; close it once they are done.
                asyncio.get_running_loop().create_task(_close_when_idle(self.workers.pop(worker_id)))
        for worker_id, w in ready.items():
            conn = self.workers.get(worker_id)
            if conn is None or conn.address != w.address or conn.token != update.endpoint_token:
                if conn is not None:
                    asyncio.get_running_loop().create_task(_close_when_idle(conn))
                credentials = self.control.credentials if self.control is not None else None
                self.workers[worker_id] = WorkerConnection(
                    worker_id, w.address, update.endpoint_token, w.score, w.capacity or 1, credentials
                )
            else:
                conn.score = w.score
        async with self._changed:
            self.state = update
            self._watch_error = None
            self._changed.notify_all()

    async def wait_ready(self, revision_id: str, timeout: float) -> control_pb2.WatchEndpointResponse:
        """Wait until the endpoint serves ``revision_id`` with enough ready workers.

        Raises:
            DeploymentError: The revision failed (with the failing step and worker log tail)
                or did not become ready within ``timeout``.
        """

        def settled() -> bool:
            s = self.state
            if self._watch_error is not None and s is None:
                return True
            return (
                s is not None
                and s.revision_id == revision_id
                and s.state
                in (
                    common_pb2.ENDPOINT_STATE_READY,
                    common_pb2.ENDPOINT_STATE_FAILED,
                    common_pb2.ENDPOINT_STATE_STOPPED,
                )
            )

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(settled), timeout)
        except TimeoutError:
            raise DeploymentError(
                f"workers were not ready within {timeout:g}s; {self._describe_workers()}", step="provision"
            ) from None
        state = self.state
        if state is None:
            assert self._watch_error is not None
            raise self._watch_error
        if state.state == common_pb2.ENDPOINT_STATE_FAILED:
            f = state.failure
            raise DeploymentError(f.message or "a worker failed", step=f.step, log_tail=f.log_tail)
        if state.state == common_pb2.ENDPOINT_STATE_STOPPED:
            raise DeploymentError("the endpoint was torn down while it was being deployed", step="provision")
        return state

    @property
    def torn_down(self) -> bool:
        """Whether the control service tore the endpoint down (teardown, TTL)."""
        return self.state is not None and self.state.state == common_pb2.ENDPOINT_STATE_STOPPED

    def _describe_workers(self) -> str:
        if self.state is None or not self.state.workers:
            return "no worker has registered"
        return ", ".join(
            f"{w.worker_id}: {common_pb2.WorkerState.Name(w.state).removeprefix('WORKER_STATE_').lower()}"
            for w in self.state.workers
        )

    def _candidates(self) -> list[WorkerConnection]:
        return [c for c in self.workers.values() if not c.draining]

    async def _pick(self, deadline: float, overloaded: set[str]) -> WorkerConnection:
        while True:
            candidates = self._candidates()
            fresh = [c for c in candidates if c.worker_id not in overloaded]
            if fresh:
                return self.balancer.pick(fresh)
            if candidates:
                raise OverloadedError(
                    f"every worker of endpoint {self.endpoint_id} ({len(candidates)}) is at its limits: the call "
                    "waited past max_queue_time or found a full queue. Raise max_workers in "
                    "configure_autoscaling, max_concurrency, or max_queue_time"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerUnavailableError(
                    f"no ready worker on endpoint {self.endpoint_id} after {_NO_WORKER_WAIT:g}s; "
                    "see `vastrpc ls` and `vastrpc logs WORKER_ID`"
                )
            self._wake()
            async with self._changed:
                try:
                    # Woken by the watch; the short bound re-checks workers that stopped draining.
                    await asyncio.wait_for(self._changed.wait_for(self._candidates), min(remaining, 0.5))
                except TimeoutError:
                    pass

    def _wake(self) -> None:
        """Ask the control service for a worker (the endpoint may have scaled to zero): once at a time."""
        if self._waking is None or self._waking.done():
            self._waking = asyncio.get_running_loop().create_task(self._wake_once())

    async def _wake_once(self) -> None:
        if self.control is None:
            return
        try:
            started = await self.control.wake(self.endpoint_id)
        except VastrpcError as exc:  # the watch reports what matters (stopped, failed)
            log.debug("wake of endpoint %s failed: %s", self.endpoint_id, exc)
            return
        if started:
            log.info("endpoint %s had no ready worker: %d started (cold start)", self.endpoint_id, started)

    async def call(
        self,
        function: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        retries: int = 0,
        logs: OutputHandler | None = None,
    ) -> CallInfo:
        """Encode the arguments, run the call on the best worker, and decode its result.

        A call that never ran (its worker was draining, at its limits, or unreachable) is
        sent to another worker. One that may have run (its worker died during it) is
        repeated only for a function declared with ``retries``, up to that many times, with
        jittered exponential backoff, on the worker then expected soonest. ``logs`` gets each
        line the function prints or logs during the call.
        """
        payload = encode_args(args, kwargs, CLOUDPICKLE)
        if not retries:
            return await self._call_once(function, payload, timeout, logs)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(retries + 1),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            retry=retry_if_exception(_worker_lost),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._call_once(function, payload, timeout, logs)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _call_once(
        self, function: str, payload: Payload, timeout: float | None, logs: OutputHandler | None
    ) -> CallInfo:
        started = time.monotonic()
        deadline = started + _NO_WORKER_WAIT
        overloaded: set[str] = set()
        attempt = 0
        while True:
            attempt += 1
            conn = await self._pick(deadline, overloaded)
            lines = LineSplitter(function, conn.worker_id, logs) if logs is not None else None
            try:
                (data, buffer_sizes), revision_id = await conn.invoke(
                    function, payload, CLOUDPICKLE, timeout, lines.feed if lines is not None else None
                )
            except CallNotDelivered as exc:
                await _retry_elsewhere_or_raise(exc, conn, overloaded, deadline, attempt)
                continue
            finally:
                if lines is not None:
                    lines.close()
            value = decode_result(data, CLOUDPICKLE, buffer_sizes)
            return CallInfo(value, conn.worker_id, revision_id, time.monotonic() - started)

    async def stream(
        self,
        function: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        logs: OutputHandler | None = None,
    ) -> AsyncIterator[Any]:
        """Run a generator function on the best worker and yield its values as they come.

        Only a call that never reached a worker is retried elsewhere.
        """
        payload = encode_args(args, kwargs, CLOUDPICKLE)
        deadline = time.monotonic() + _NO_WORKER_WAIT
        overloaded: set[str] = set()
        attempt = 0
        while True:
            attempt += 1
            conn = await self._pick(deadline, overloaded)
            lines = LineSplitter(function, conn.worker_id, logs) if logs is not None else None
            values = conn.stream(function, payload, CLOUDPICKLE, timeout, lines.feed if lines is not None else None)
            try:
                first = await anext(values)
            except StopAsyncIteration:
                if lines is not None:
                    lines.close()
                return
            except CallNotDelivered as exc:
                await _retry_elsewhere_or_raise(exc, conn, overloaded, deadline, attempt)
                continue
            try:
                yield decode_result(first[0], CLOUDPICKLE, first[1])
                async for data, buffer_sizes in values:
                    yield decode_result(data, CLOUDPICKLE, buffer_sizes)
            finally:
                await values.aclose()
                if lines is not None:
                    lines.close()
            return

    async def close(self) -> None:
        tasks = [t for t in (self._task, self._waking) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns, self.workers = list(self.workers.values()), {}
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def _retry_elsewhere_or_raise(
    exc: CallNotDelivered, conn: WorkerConnection, overloaded: set[str], deadline: float, attempt: int
) -> None:
    """A call that never ran: note a worker at its limits and back off, or raise once out of time."""
    if exc.overloaded:
        overloaded.add(conn.worker_id)
    if time.monotonic() >= deadline:
        raise exc
    await asyncio.sleep(min(0.01 * attempt, 0.2))


def _worker_lost(exc: BaseException) -> bool:
    """A failure that may be retried for a function declared idempotent: its worker went away."""
    return isinstance(exc, WorkerUnavailableError) and not isinstance(exc, OverloadedError)


async def _close_when_idle(conn: WorkerConnection, limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    while conn.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await conn.close()
