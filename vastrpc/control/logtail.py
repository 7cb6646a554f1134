"""Worker log files read for FollowLogs: tails cut at whole lines, and cursors that follow a file as it grows."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from vastrpc._errors import DefinitionError, NotFoundError
from vastrpc.control.stores.base import Store, WorkerRow

__all__ = [
    "MAX_LINE",
    "MAX_TAIL_BYTES",
    "POLL_INTERVAL",
    "READ_CHUNK",
    "LogCursor",
    "LogFollower",
    "pieces",
    "read_tail",
]

# A tail never reaches further back than this, whatever was asked: a log can grow without bound.
MAX_TAIL_BYTES = 4 << 20
# The most one read (and so one FollowLogs message) takes from a file: the stream stays fair
# between workers and its memory bounded.
READ_CHUNK = 256 << 10
# A line without its newline yet is held back until it ends; one longer than this is sent as it is.
MAX_LINE = 64 << 10
# How often a follower looks for new lines: a stat per followed file, a read only when it grew.
POLL_INTERVAL = 0.25
# A worker in these states writes no more (its process is gone or going).
_FINISHED = ("stopped", "failed")


def read_tail(path: Path, lines: int | None, *, limit: int = MAX_TAIL_BYTES) -> tuple[bytes, int]:
    """The end of a log: its last ``lines`` whole lines (all of them when None) within its last ``limit`` bytes.

    Returns:
        The text, and the offset just past its last newline, where a cursor that follows
        the file starts (a line still being written is read by the cursor once it ends).
        A missing file is an empty log.
    """
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - limit)
            # The byte before the cut says whether it fell between two lines.
            f.seek(max(0, start - 1))
            before = f.read(1) if start > 0 else b"\n"
            data = f.read(size - start)
    except FileNotFoundError:
        return b"", 0
    if before != b"\n":
        # The cut fell inside a line: begin at the next whole one.
        cut = data.find(b"\n")
        data, start = (data[cut + 1 :], start + cut + 1) if cut >= 0 else (b"", size)
    end = data.rfind(b"\n") + 1
    complete = data[:end]
    if lines is not None:
        kept = complete.splitlines(keepends=True)[-lines:] if lines > 0 else []
        complete = b"".join(kept)
    return complete, start + end


def pieces(data: bytes, size: int = READ_CHUNK) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes, each cut after a newline where the piece has one."""
    while data:
        if len(data) <= size:
            yield data
            return
        cut = data.rfind(b"\n", 0, size) + 1 or size
        yield data[:cut]
        data = data[cut:]


class LogCursor:
    """How far one worker's log file has been sent: each ``read`` returns the whole lines added since.

    Args:
        path: The log file (it may not exist yet).
        offset: Where to start reading.
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._pending = b""

    def read(self, *, final: bool = False) -> bytes:
        """New complete lines, at most ``READ_CHUNK`` bytes of the file per call.

        Only a ``stat`` when nothing was written. A file that shrank (replaced or truncated)
        is read again from its start.

        Args:
            final: The writer has stopped: also return a last line that has no newline.
        """
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if size < self.offset:
            self.offset, self._pending = 0, b""
        data = b""
        if size > self.offset:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read(min(size - self.offset, READ_CHUNK))
            self.offset += len(data)
        data = self._pending + data
        end = data.rfind(b"\n") + 1
        if final or len(data) - end > MAX_LINE:
            end = len(data)
        self._pending = data[end:]
        return data[:end]


class LogFollower:
    """The logs FollowLogs sends: one worker's, or those of a deployment's workers.

    Args:
        store: The state store (workers, endpoints and their log paths).
        default_log_path: Where the provider writes a worker's log when its row names none.
        worker_id: Follow this worker; or
        name: every worker of this deployment (``tag``: of that endpoint only) that is not
            stopped (all of them when every one is), and with follow those started later.

    Raises:
        DefinitionError: Neither a worker nor a deployment was named.
        NotFoundError: No such worker, deployment or tag.
    """

    def __init__(
        self,
        store: Store,
        default_log_path: Callable[[str], Path],
        *,
        worker_id: str = "",
        name: str = "",
        tag: str = "",
    ) -> None:
        self.store = store
        self._default_log_path = default_log_path
        self.worker_id = worker_id
        self._endpoint_ids: list[str] = []
        if worker_id:
            if self.store.get_worker(worker_id) is None:
                raise NotFoundError(f"no worker {worker_id!r}; `vastrpc ls` lists the workers")
            return
        if not name:
            raise DefinitionError("FollowLogs needs a worker_id or a deployment name")
        deployment = store.get_deployment_by_name(name)
        if deployment is None:
            raise NotFoundError(f"no deployment named {name!r}")
        endpoints = [e for e in store.list_endpoints(deployment.id) if not tag or e.tag == tag]
        if tag and not endpoints:
            raise NotFoundError(f"deployment {name!r} has no endpoint with tag {tag!r}")
        self._endpoint_ids = [e.id for e in endpoints]

    def _path(self, worker: WorkerRow) -> Path:
        return Path(worker.log_path or self._default_log_path(worker.id))

    def _workers(self, *, everyone: bool = False) -> list[WorkerRow]:
        if self.worker_id:
            worker = self.store.get_worker(self.worker_id)
            return [worker] if worker is not None else []
        rows = [w for e in self._endpoint_ids for w in self.store.list_workers(endpoint_id=e)]
        live = [w for w in rows if w.state != "stopped"]
        return (live or rows) if everyone else live

    def _finished(self) -> bool:
        """A deployment is finished when every one of its endpoints is stopped (torn down)."""
        endpoints = [self.store.get_endpoint(e) for e in self._endpoint_ids]
        return all(e is None or e.state == "stopped" for e in endpoints)

    async def stream(
        self, tail_lines: int | None, follow: bool, stopping: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[tuple[str, bytes]]:
        """``(worker_id, text)`` pieces: each log's tail, then (with ``follow``) new lines as they come.

        Following ends once the worker (for a deployment: every endpoint) has stopped and
        what it wrote was sent, or when ``stopping()`` says the service is going down; the
        caller cancelling ends it at once. Files are opened only for each read.
        """
        cursors: dict[str, LogCursor] = {}
        for worker in self._workers(everyone=not follow):
            path = self._path(worker)
            if follow and tail_lines == 0:
                try:
                    offset = os.stat(path).st_size
                except FileNotFoundError:
                    offset = 0
                text = b""
            else:
                text, offset = await asyncio.to_thread(read_tail, path, tail_lines)
            for piece in pieces(text):
                yield worker.id, piece
            cursors[worker.id] = LogCursor(path, offset)
        if not follow:
            # A line the worker is still writing belongs to the log as it is now.
            for worker_id, cursor in cursors.items():
                for piece in pieces(cursor.read(final=True)):
                    yield worker_id, piece
            return
        done: set[str] = set()
        while not stopping():
            busy = False
            workers = {w.id: w for w in self._workers()}
            for worker_id, worker in workers.items():
                if worker_id not in cursors and worker_id not in done:
                    # Started while following: all of its log is new.
                    cursors[worker_id] = LogCursor(self._path(worker), 0)
            for worker_id, cursor in list(cursors.items()):
                row = workers.get(worker_id) or self.store.get_worker(worker_id)
                finished = row is None or row.state in _FINISHED
                text = cursor.read()
                busy = busy or len(text) >= READ_CHUNK
                if finished and cursor.offset >= _size(cursor.path):
                    # It writes no more and all it wrote was read: send a last unfinished line too.
                    text += cursor.read(final=True)
                    del cursors[worker_id]
                    done.add(worker_id)
                if text:
                    yield worker_id, text
            if not cursors and (self.worker_id or self._finished()):
                return
            if not busy:
                await asyncio.sleep(POLL_INTERVAL)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
