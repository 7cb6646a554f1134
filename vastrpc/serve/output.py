"""Per-call capture of a function's prints and logging, sent to a caller that asked for them."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO

__all__ = ["STDERR", "STDOUT", "CallOutput", "capture_output", "capturing_call"]

STDOUT = 1
STDERR = 2
# Output waiting to be sent beyond this is dropped (and counted): a chatty function must not
# grow the worker's memory faster than its caller reads.
MAX_PENDING = 1 << 20
# Output is gathered this long before it is sent: one message per burst of prints, not per print.
_BATCH_SECONDS = 0.02

_current: contextvars.ContextVar[CallOutput | None] = contextvars.ContextVar("vastrpc_call_output", default=None)


class CallOutput:
    """What one call writes to stdout and stderr, sent to its caller in ordered batches.

    ``write`` may be called from any thread (a function's ``asyncio.to_thread`` work inherits
    the call's context); sending happens on the event loop that created this object.
    """

    def __init__(self, send: Callable[[int, str], Awaitable[None]]) -> None:
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._pending: list[tuple[int, str]] = []
        self._size = 0
        self._dropped = 0
        self._scheduled = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def write(self, stream: int, text: str) -> None:
        """Queue ``text`` written to ``stream`` (STDOUT or STDERR)."""
        if threading.get_ident() == self._loop_thread:
            self._append(stream, text)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is stopping
                self._loop.call_soon_threadsafe(self._append, stream, text)

    def _append(self, stream: int, text: str) -> None:
        if self._closed or not text:
            return
        if self._size + len(text) > MAX_PENDING:
            self._dropped += len(text)
            return
        self._size += len(text)
        if self._pending and self._pending[-1][0] == stream:
            self._pending[-1] = (stream, self._pending[-1][1] + text)
        else:
            self._pending.append((stream, text))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_later(_BATCH_SECONDS, self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        task = self._loop.create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send what is queued now (before a value or the call's end, so output precedes it)."""
        batch, self._pending, self._size = self._pending, [], 0
        if self._dropped:
            note = f"\n[vastrpc: {self._dropped} characters of output dropped: the caller fell behind]\n"
            batch.append((STDERR, note))
            self._dropped = 0
        for stream, text in batch:
            await self._send(stream, text)

    async def close(self) -> None:
        """Send the rest; later writes (a thread the call left running) are ignored."""
        await self.flush()
        self._closed = True
        # A batch already being sent is awaited so the call's end cannot overtake it.
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _Tee:
    """A stand-in for sys.stdout or sys.stderr: writes go through, and to the current call's output."""

    def __init__(self, target: TextIO, stream: int) -> None:
        self._target = target
        self._stream = stream

    def write(self, text: str) -> int:
        written = self._target.write(text)
        output = _current.get()
        if output is not None:
            output.write(self._stream, text)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@contextlib.contextmanager
def capture_output() -> Iterator[None]:
    """Route sys.stdout and sys.stderr through the per-call capture for the duration (idempotent).

    Output still reaches the original streams (the worker's log); a call's output also
    reaches its caller while ``capturing_call`` is active in its context.
    """
    if isinstance(sys.stdout, _Tee):
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout = _Tee(sys.stdout, STDOUT)  # type: ignore[assignment]
    sys.stderr = _Tee(sys.stderr, STDERR)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


@contextlib.contextmanager
def capturing_call(output: CallOutput) -> Iterator[None]:
    """Send what this context (and tasks or threads started from it) writes to ``output``."""
    token = _current.set(output)
    try:
        yield
    finally:
        _current.reset(token)
