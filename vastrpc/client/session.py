"""Sessions: a series of calls pinned to one worker, held open on the control service while in use."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from vastrpc._errors import DefinitionError, OverloadedError, SessionLostError, VastrpcError, WorkerUnavailableError
from vastrpc._payload import CLOUDPICKLE, decode_result, encode_args
from vastrpc.client.connection import CallNotDelivered, WorkerConnection
from vastrpc.client.output import LineSplitter
from vastrpc.client.router import CallInfo, Router
from vastrpc.definition import FunctionOptions

__all__ = ["Session"]

log = logging.getLogger("vastrpc.client")

# Seconds between two waits for room on a session's worker that is at its limits.
_FULL_RETRY = 0.05


class _Remote(Protocol):
    """What a session needs of a remote function (``RemoteFunction``)."""

    @property
    def options(self) -> FunctionOptions: ...


class Session:
    """A series of calls pinned to one worker, e.g. an LLM conversation whose KV cache lives there.

    Made by ``app.session(ttl=...)``. The first call goes where the balancer sends it, and
    every later call of the session to that same worker. Each call extends the session's
    life: it ends after ``ttl`` seconds without a call, or when closed (``async with``
    closes it). While it is open the control service counts it as reserved capacity on its
    worker, which the autoscaler retires last.

    When the worker goes away (draining for an update, stopped, failed, unreachable), the
    session's calls raise :class:`~vastrpc.SessionLostError` naming the worker: they are never
    moved to another one, whose state would not be the session's.

    Args:
        router: Returns the deployment's router (deploying first if needed).
        ttl: Seconds of idleness that end the session.

    Attributes:
        id: The session's id.
        ttl: Seconds of idleness that end the session.
        worker_id: The worker the session is pinned to; None before its first call.
    """

    def __init__(self, router: Callable[[], Awaitable[Router]], ttl: float = 300.0) -> None:
        if not isinstance(ttl, int | float) or ttl <= 0:
            raise DefinitionError(f"session: ttl must be positive seconds, got {ttl!r}")
        self._router_of = router
        self.id = "s-" + secrets.token_hex(8)
        self.ttl = float(ttl)
        self.worker_id: str | None = None
        self._conn: WorkerConnection | None = None
        self._address = ""
        self._pinning = asyncio.Lock()
        self._expires = time.monotonic() + self.ttl
        self._in_flight = 0
        self._ended: str | None = None  # why no call may run any more
        self._keeper: asyncio.Task[None] | None = None
        self._router: Router | None = None

    @property
    def closed(self) -> bool:
        """Whether the session ended (closed, expired, or its worker lost)."""
        return self._ended is not None

    async def call(self, fn: _Remote, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the session's worker and return its result.

        Raises:
            SessionLostError: The session's worker went away, or the session ended.
        """
        return (await self.call_with_info(fn, *args, **kwargs)).value

    async def call_with_info(self, fn: _Remote, *args: Any, **kwargs: Any) -> CallInfo:
        """Like ``call``, with where it ran (:class:`~vastrpc.CallInfo`)."""
        options = fn.options
        if options.generator:
            raise DefinitionError(f"{options.name} is an async generator: sessions take awaited calls only")
        self._check_open()
        self._in_flight += 1
        try:
            return await self._call(options, args, kwargs)
        finally:
            self._in_flight -= 1
            self._expires = time.monotonic() + self.ttl

    async def _call(self, options: FunctionOptions, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallInfo:
        started = time.monotonic()
        timeout = options.timeout
        call_deadline = None if timeout is None else started + timeout
        conn = await self._connection(timeout)
        payload = encode_args(args, kwargs, CLOUDPICKLE)
        handler = options.output_handler()
        while True:
            lines = LineSplitter(options.name, conn.worker_id, handler) if handler is not None else None
            left = None if call_deadline is None else max(call_deadline - time.monotonic(), 0.001)
            try:
                (data, sizes), revision_id = await conn.invoke(
                    options.name, payload, CLOUDPICKLE, left, lines.feed if lines is not None else None
                )
            except CallNotDelivered as exc:
                if exc.overloaded and (call_deadline is None or time.monotonic() < call_deadline):
                    await asyncio.sleep(_FULL_RETRY)  # full: wait for room on this worker, never another
                    conn = self._pinned()
                    continue
                if exc.overloaded:
                    raise OverloadedError(
                        f"the session's worker {conn.worker_id} stayed full until the call's timeout ({timeout:g}s)"
                    ) from None
                raise self._lose(f"the call never reached it ({exc})") from None
            except WorkerUnavailableError as exc:
                raise self._lose(f"it went away during the call ({exc})") from None
            finally:
                if lines is not None:
                    lines.close()
            value = decode_result(data, CLOUDPICKLE, sizes)
            return CallInfo(value, conn.worker_id, revision_id, time.monotonic() - started)

    def _check_open(self) -> None:
        if self._ended is None and self._in_flight == 0 and time.monotonic() >= self._expires:
            self._ended = f"it expired after {self.ttl:g}s without a call"
            self._release()
        if self._ended is not None:
            pinned = f" (pinned to worker {self.worker_id})" if self.worker_id else ""
            raise SessionLostError(
                f"session {self.id}{pinned} has ended: {self._ended}; open a new session",
                session_id=self.id,
                worker_id=self.worker_id or "",
            )

    async def _connection(self, timeout: float | None) -> WorkerConnection:
        """The pinned worker's connection; at the first call, the balancer's pick, pinned from then on."""
        if self._conn is None:
            async with self._pinning:
                if self._conn is None:
                    router = self._router = await self._router_of()
                    conn = await router.pick(timeout)
                    self._conn, self.worker_id, self._address = conn, conn.worker_id, conn.address
                    if router.control is not None:
                        self._keeper = asyncio.get_running_loop().create_task(self._keep(router))
                    return conn
        return self._pinned()

    def _pinned(self) -> WorkerConnection:
        """The pinned worker's connection as the router knows it now, or SessionLostError."""
        assert self._router is not None and self.worker_id is not None
        self._check_open()
        conn = self._router.workers.get(self.worker_id)
        if conn is None:
            raise self._lose("it is no longer ready (stopped, failed or draining)")
        if conn.address != self._address:
            raise self._lose(f"its serving process was replaced ({self._address} → {conn.address})")
        if conn.draining:
            raise self._lose("it is draining")
        return conn

    def _lose(self, why: str) -> SessionLostError:
        self._ended = f"its worker {self.worker_id} was lost: {why}"
        self._release()
        return SessionLostError(
            f"session {self.id} lost its worker {self.worker_id}: {why}. The session's state there (a cache, a "
            "conversation) is gone, so its calls are not sent to another worker: open a new session",
            session_id=self.id,
            worker_id=self.worker_id or "",
        )

    async def _keep(self, router: Router) -> None:
        """Hold the session open on the control service while it lives, renewing before it lapses there."""
        assert router.control is not None and self.worker_id is not None
        period = min(max(self.ttl / 4, 1.0), 30.0)
        while self._ended is None:
            now = time.monotonic()
            if self._in_flight == 0 and now >= self._expires:
                self._ended = f"it expired after {self.ttl:g}s without a call"
                break
            # One period of slack: a call just before a renewal is seen at the next one.
            remaining = max(self._expires - now, 0.0) + (self.ttl if self._in_flight else 0.0) + period
            try:
                if not await router.control.hold_session(router.endpoint_id, self.id, self.worker_id, remaining):
                    self._ended = f"its worker {self.worker_id} was lost: the control service says it is not ready"
                    break
            except VastrpcError as exc:  # calls go on; the reservation is renewed at the next try
                log.debug("session %s: renewal failed: %s", self.id, exc)
            await asyncio.sleep(period)
        await self._released(router)

    async def _released(self, router: Router) -> None:
        if router.control is None or self.worker_id is None:
            return
        try:
            await router.control.hold_session(router.endpoint_id, self.id, self.worker_id, 0.0)
        except VastrpcError as exc:  # it lapses there by itself
            log.debug("session %s: release failed: %s", self.id, exc)

    def _release(self) -> None:
        """Stop holding the session (its keeper releases it on the control service)."""
        keeper = self._keeper
        if keeper is not None and not keeper.done():
            keeper.cancel()
            if self._router is not None:
                task = asyncio.get_running_loop().create_task(self._released(self._router))
                _pending.add(task)
                task.add_done_callback(_pending.discard)

    async def close(self) -> None:
        """End the session and release its worker; later calls raise SessionLostError. A second close is a no-op."""
        if self._ended is None:
            self._ended = "it was closed"
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            if self._router is not None:
                await self._released(self._router)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = f"ended: {self._ended}" if self._ended else "open"
        return f"<Session {self.id} worker={self.worker_id} {state}>"


# Releases sent in the background (a session lost or expired during a call): referenced until done.
_pending: set[asyncio.Task[None]] = set()
