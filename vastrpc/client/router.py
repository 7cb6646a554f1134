"""Keeps an endpoint's ready workers current through the control service's watch, and routes calls to them."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

from vastrpc._errors import (
    CallTimeoutError,
    ControlServiceError,
    DefinitionError,
    DeploymentError,
    OverloadedError,
    VastrpcError,
    WorkerUnavailableError,
)
from vastrpc._payload import CLOUDPICKLE, Payload, decode_result, encode_args
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.client.balancer import BALANCERS, WorkerPool
from vastrpc.client.connection import CallNotDelivered, WorkerConnection
from vastrpc.client.control import ControlClient
from vastrpc.client.output import LineSplitter, RemoteOutput

log = logging.getLogger("vastrpc.client")

# How long a call waits for a ready worker before it fails.
_NO_WORKER_WAIT = 60.0
# At most this many calls wait in one client for a worker with room (Vast's global queue); more fail at once.
MAX_WAITING = 100_000
# Worker states on the way to ready: a call waits for such a worker rather than failing at once.
_COMING_UP = frozenset(
    {
        common_pb2.WORKER_STATE_STARTING,
        common_pb2.WORKER_STATE_DOWNLOADING,
        common_pb2.WORKER_STATE_PULLING,
        common_pb2.WORKER_STATE_INSTALLING,
        common_pb2.WORKER_STATE_LOADING,
        common_pb2.WORKER_STATE_BENCHMARKING,
    }
)
# How long after its timeout a call that no path ended yet is ended anyway.
_BACKSTOP_GRACE = 0.1
# Seconds between two looks for room of the call at the head of the queue, when no call of ours ends.
_ROOM_POLL = 0.25


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
        max_queue_time: float = 0.0,
    ) -> None:
        """Follow ``endpoint_id`` through the control service's watch; or, with no control
        service, route to a fixed list of ``workers`` (``vastrpc.testing``), each counting as
        full beyond ``max_queue_time`` seconds of expected queue (0: no limit; with a control
        service the endpoint's ``max_queue_time`` applies)."""
        self.control = control
        self.endpoint_id = endpoint_id
        try:
            self.balancer = BALANCERS[balancer]()
        except KeyError:
            raise DefinitionError(f"unknown balancer {balancer!r}; choose one of {', '.join(BALANCERS)}") from None
        self._waking: asyncio.Task[None] | None = None
        self.state: control_pb2.WatchEndpointResponse | None = None
        self.workers = WorkerPool({c.worker_id: c for c in workers or ()})
        for conn in self.workers.values():
            conn.on_room = self._wake_waiting
        self._max_queue_time = max_queue_time
        # Calls waiting for a worker with room, first come first served: each one's wake-up.
        self._waiting: deque[asyncio.Event] = deque()
        self._changed = asyncio.Condition()
        self._watch_error: BaseException | None = None
        # Connections being closed in the background: referenced, so none is collected half-way.
        self._closing: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._watch()) if control is not None else None

    async def _watch(self) -> None:
        assert self.control is not None
        failures = 0
        while True:
            try:
                async for update in self.control.watch(self.endpoint_id):
                    failures = 0
                    await self._apply(update)
                raise ControlServiceError("the control service ended the endpoint watch")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving from known workers while the control service is away
                failures += 1
                async with self._changed:
                    self._watch_error = exc
                    self._changed.notify_all()
                # The watch already turned to the next control service, if there is one: try it
                # at once; back off only once every one of them failed in a row.
                rounds, step = divmod(failures, len(self.control.addresses))
                delay = 0.05 if rounds == 0 or step else min(0.2 * 2 ** (rounds - 1), 5.0)
                log.debug("endpoint watch failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def _apply(self, update: control_pb2.WatchEndpointResponse) -> None:
        # Every ready worker takes calls, whichever revision it serves: during an update the
        # old revision keeps serving until the new one is ready.
        ready = {w.worker_id: w for w in update.workers if w.state == common_pb2.WORKER_STATE_READY and w.address}
        failed = {w.worker_id for w in update.workers if w.state == common_pb2.WORKER_STATE_FAILED}
        for worker_id in list(self.workers):
            if worker_id in failed:
                # Declared lost (dead, hung, frozen): its calls in flight will never be answered,
                # so they fail now (and an idempotent one is retried elsewhere).
                self._background(self.workers.pop(worker_id).close())
            elif worker_id not in ready:
                # Draining or stopped: calls in flight finish on their own; close it once they are done.
                self._background(_close_when_idle(self.workers.pop(worker_id)))
        for worker_id, w in ready.items():
            conn = self.workers.get(worker_id)
            if conn is None or conn.address != w.address or conn.token != update.endpoint_token:
                if conn is not None:
                    self._background(_close_when_idle(conn))
                credentials = self.control.credentials if self.control is not None else None
                conn = self.workers[worker_id] = WorkerConnection(
                    worker_id, w.address, update.endpoint_token, w.score, w.capacity or 1, credentials
                )
                conn.on_room = self._wake_waiting
            else:
                conn.score = w.score
        async with self._changed:
            self.state = update
            self._watch_error = None
            self._changed.notify_all()
        self._wake_waiting()  # a new worker, or the endpoint's max_queue_time changed

    def _background(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

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
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(settled)
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

    def _candidates(self) -> Sequence[WorkerConnection]:
        """Every worker, or none when all are draining; the pick skips draining ones itself.

        No list is built per call: with a thousand workers that alone would cost more than the pick.
        """
        pool = self.workers.connections()
        return pool if any(not c.draining for c in pool) else ()

    @property
    def max_queue_time(self) -> float:
        """Seconds of expected queue beyond which a worker counts as full (the endpoint's setting; 0: no limit)."""
        return self.state.autoscaling.max_queue_time if self.state is not None else self._max_queue_time

    @property
    def waiting(self) -> int:
        """Calls waiting in this client for a worker with room."""
        return len(self._waiting)

    def _roomy(self, candidates: Sequence[WorkerConnection]) -> WorkerConnection | None:
        """The balancer's pick among the workers with room, or None when every one is full.

        A worker is full while it refused a call for being at its limits (until a call of
        ours there ends, or ``FULL_HOLD`` seconds), and while its expected queue time (calls
        of ours beyond its slots / its throughput) is above ``max_queue_time``. The balancer
        asks only about the workers it looks at (a sample of a large endpoint's).
        """
        now = time.monotonic()
        limit = self.max_queue_time

        def has_room(c: WorkerConnection) -> bool:
            return c.full_until <= now and (limit <= 0 or c.expected_queue_time() <= limit) and not c.draining

        return self.balancer.pick(candidates, has_room)

    def _wake_waiting(self) -> None:
        """Room may have freed (a call ended, the workers changed): the call at the head of the queue looks."""
        if self._waiting:
            self._waiting[0].set()

    async def pick(self, timeout: float | None) -> WorkerConnection:
        """The worker the balancer would send a call to now, waiting for one (with room) within ``timeout``."""
        call_deadline = None if timeout is None else time.monotonic() + timeout
        return await self._pick(time.monotonic() + _NO_WORKER_WAIT, call_deadline, timeout)

    async def _pick(
        self, deadline: float, call_deadline: float | None, timeout: float | None, *, front: bool = False
    ) -> WorkerConnection:
        """A worker for the next call: one with room, waiting for room in the client's queue when all are full.

        Args:
            deadline: When to give up waiting for any ready worker at all.
            call_deadline: When the call's own timeout ends (time.monotonic()); None for no timeout.
            timeout: The call's timeout, for the message.
            front: Wait at the head of the queue (a call a full worker just refused keeps its turn).
        """
        while True:
            candidates = self._candidates()
            if candidates:
                if not self._waiting:
                    conn = self._roomy(candidates)
                    if conn is not None:
                        return conn
                found = await self._wait_for_room(call_deadline, timeout, front)
                if found is not None:
                    return found
                continue  # every worker went away while the call waited
            if self._waits_for_capacity():
                # It lost its workers and none could be placed: say so now, not at the timeout.
                why = self.state.failure  # type: ignore[union-attr]
                raise WorkerUnavailableError(
                    f"endpoint {self.endpoint_id} has no worker and waits for capacity ({why.step}: {why.message}); "
                    "it serves again by itself when a worker can be placed — `vastrpc ls` shows what it waits for"
                )
            limit = deadline if call_deadline is None else min(deadline, call_deadline)
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise self._no_worker(limit == call_deadline, timeout)
            self._wake()
            async with self._changed:
                try:
                    # Woken by the watch; the short bound re-checks workers that stopped draining.
                    async with asyncio.timeout(min(remaining, 0.5)):
                        await self._changed.wait_for(self._candidates)
                except TimeoutError:
                    pass

    def _waits_for_capacity(self) -> bool:
        """The endpoint lost every worker and none is on its way (a replacement starting is waited for)."""
        s = self.state
        return (
            s is not None
            and s.state == common_pb2.ENDPOINT_STATE_WAITING
            and not any(w.state in _COMING_UP for w in s.workers)
        )

    def _no_worker(self, timed_out: bool, timeout: float | None) -> WorkerUnavailableError:
        within = f"within the call's timeout ({timeout:g}s)" if timed_out else f"after {_NO_WORKER_WAIT:g}s"
        why = f"; the endpoint watch failed: {self._watch_error}" if self._watch_error is not None else ""
        return WorkerUnavailableError(
            f"no ready worker on endpoint {self.endpoint_id} {within} ({self._describe_workers()}{why}); "
            "see `vastrpc ls` and `vastrpc logs WORKER_ID`"
        )

    async def _wait_for_room(
        self, call_deadline: float | None, timeout: float | None, front: bool
    ) -> WorkerConnection | None:
        """Wait in the queue (first come, first served) until a worker has room; None if none is left.

        Raises:
            OverloadedError: The call's timeout passed while every worker stayed full, or
                ``MAX_WAITING`` calls already wait.
        """
        if len(self._waiting) >= MAX_WAITING:
            raise OverloadedError(
                f"every worker of endpoint {self.endpoint_id} is full and {MAX_WAITING} calls already wait in "
                "this client: send fewer at once (fn.map(..., concurrency=N)), or raise max_workers in "
                "configure_autoscaling, max_concurrency or max_queue"
            )
        waiter = asyncio.Event()
        if front:
            self._waiting.appendleft(waiter)
        else:
            self._waiting.append(waiter)
        # When the call began: refused calls come back here, and the whole wait is what counts.
        called = time.monotonic() if call_deadline is None or timeout is None else call_deadline - timeout
        try:
            while True:
                head = self._waiting[0] is waiter
                # Checked first: room found just as the timeout passes leaves no time to send the call.
                remaining = math.inf if call_deadline is None else call_deadline - time.monotonic()
                if head and remaining > 0:
                    candidates = self._candidates()
                    if not candidates:
                        return None
                    conn = self._roomy(candidates)
                    if conn is not None:
                        return conn
                if remaining <= 0:
                    raise OverloadedError(
                        f"every worker of endpoint {self.endpoint_id} ({len(self._candidates())}) stayed full for "
                        f"{time.monotonic() - called:.1f}s, until the call's timeout ({timeout:g}s) passed, with "
                        f"{len(self._waiting) - 1} other calls waiting in this client: raise the call's timeout, "
                        "max_workers in configure_autoscaling (or lower target_queue_time to scale up sooner), "
                        "max_concurrency or max_queue"
                    )
                waiter.clear()
                bound = min(remaining, _ROOM_POLL) if head else remaining
                try:
                    async with asyncio.timeout(None if math.isinf(bound) else bound):
                        await waiter.wait()
                except TimeoutError:
                    pass
        finally:
            if self._waiting and self._waiting[0] is waiter:
                self._waiting.popleft()
            else:
                self._waiting.remove(waiter)
            self._wake_waiting()  # the next call in line looks for room too

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
        started = time.monotonic()
        call_deadline = None if timeout is None else started + timeout
        # Every path (waiting for a worker, opening a stream, sending, retrying, backing off)
        # checks the deadline itself and says why it gave up; this bound is the backstop, a
        # moment later so that those say it first.
        bound = asyncio.timeout(None if timeout is None else timeout + _BACKSTOP_GRACE)
        try:
            async with bound:
                if not retries:
                    return await self._call_once(function, payload, started, call_deadline, logs)
                stop = stop_after_attempt(retries + 1)
                retrying = AsyncRetrying(
                    # No retry begins once the call's time is up.
                    stop=stop if timeout is None else stop | stop_after_delay(timeout),
                    wait=wait_random_exponential(multiplier=0.05, max=2.0),
                    retry=retry_if_exception(_worker_lost),
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        return await self._call_once(function, payload, started, call_deadline, logs)
                raise AssertionError("unreachable: tenacity reraises the last error")
        except TimeoutError:
            if not bound.expired():
                raise  # a CallTimeoutError saying where, or the function's own TimeoutError
            raise CallTimeoutError(f"{function} did not finish within {timeout:g}s") from None

    async def _call_once(
        self, function: str, payload: Payload, started: float, call_deadline: float | None, logs: OutputHandler | None
    ) -> CallInfo:
        timeout = None if call_deadline is None else call_deadline - started
        deadline = time.monotonic() + _NO_WORKER_WAIT
        attempt = 0
        refused = False
        while True:
            attempt += 1
            conn = await self._pick(deadline, call_deadline, timeout, front=refused)
            lines = LineSplitter(function, conn.worker_id, logs) if logs is not None else None
            try:
                (data, buffer_sizes), revision_id = await conn.invoke(
                    function, payload, CLOUDPICKLE, _left(call_deadline), lines.feed if lines is not None else None
                )
            except CallNotDelivered as exc:
                refused = exc.overloaded
                await _retry_elsewhere_or_raise(exc, deadline, call_deadline, attempt)
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
        started = time.monotonic()
        deadline = started + _NO_WORKER_WAIT
        call_deadline = None if timeout is None else started + timeout
        attempt = 0
        refused = False
        while True:
            attempt += 1
            conn = await self._pick(deadline, call_deadline, timeout, front=refused)
            lines = LineSplitter(function, conn.worker_id, logs) if logs is not None else None
            values = conn.stream(
                function, payload, CLOUDPICKLE, _left(call_deadline), lines.feed if lines is not None else None
            )
            try:
                first = await anext(values)
            except StopAsyncIteration:
                if lines is not None:
                    lines.close()
                return
            except CallNotDelivered as exc:
                refused = exc.overloaded
                await _retry_elsewhere_or_raise(exc, deadline, call_deadline, attempt)
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
        tasks = [t for t in (self._task, self._waking, *self._closing) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns, self.workers = list(self.workers.values()), WorkerPool()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def _retry_elsewhere_or_raise(
    exc: CallNotDelivered, deadline: float, call_deadline: float | None, attempt: int
) -> None:
    """A call that never ran: a worker at its limits is now full (the call waits for room in the
    queue, within its timeout); otherwise back off, or raise once out of time."""
    if exc.overloaded:
        return
    now = time.monotonic()
    if now >= deadline or (call_deadline is not None and now >= call_deadline):
        took = "its timeout passed" if call_deadline is not None and now >= call_deadline else "no worker took it"
        raise CallNotDelivered(
            f"the call never ran: {exc} ({took}, after {attempt} attempt(s)); it is safe to call again. See "
            "`vastrpc ls` for the endpoint's workers"
        ) from None
    await asyncio.sleep(min(0.01 * attempt, 0.2, max(0.0, (call_deadline or math.inf) - now)))


def _left(call_deadline: float | None) -> float | None:
    """What is left of a call's timeout for the worker (the wait for room counts against it)."""
    return None if call_deadline is None else max(call_deadline - time.monotonic(), 0.001)


def _worker_lost(exc: BaseException) -> bool:
    """A failure that may be retried for a function declared idempotent: its worker went away."""
    return isinstance(exc, WorkerUnavailableError) and not isinstance(exc, OverloadedError)


async def _close_when_idle(conn: WorkerConnection, limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    try:
        while conn.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await conn.close()  # also when the router closes first
