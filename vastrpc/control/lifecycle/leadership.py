"""Control services sharing one store: which one leads (runs the loops), and which process owns a worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from vastrpc._process import pid_alive
from vastrpc.control.stores.base import LeaderLock, WorkerRow

__all__ = ["Leadership", "on_this_host", "orphan_loss", "owner_is_gone", "process_owner"]

log = logging.getLogger(__name__)

# How often a follower tries to take the lock, and a leader checks that it still holds it.
POLL_INTERVAL = 1.0


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" when unknown): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so count after its closing parenthesis.
    return stat.rpartition(")")[2].split()[19]


# The owner of a worker started by hand (`vastrpc worker --join`), maybe on another host: no
# control service process owns it, and only its heartbeats tell whether it lives.
JOINED = "joined"


def process_owner() -> str:
    """This process as the owner of the workers it starts: ``host:pid:start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def owner_is_gone(owner: str, *, me: str | None = None) -> bool | None:
    """Whether the control service process that started a worker is known to be gone.

    True: it ran on this host and has exited (or the row predates owners); False: it runs
    (on this host); None: it ran on another host, so only heartbeats can tell.
    """
    me = me or process_owner()
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    if host != me.partition(":")[0]:
        return None
    pid_text, _, start = rest.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if owner == me:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return _start_time(pid) != start


class Leadership:
    """Holds the leader lock when it can, and runs the leader's loops only while it holds it.

    A follower tries the lock every ``interval`` seconds; a leader checks as often that it
    still holds it (on PostgreSQL: that the lock's connection is alive). A leader that dies
    loses the lock with its connection, and a follower takes over at its next try.

    Args:
        lock: The store's leader lock (always held on SQLite: the sole service leads).
        interval: Seconds between two tries or checks.
        on_change: Called with True on becoming leader and False on ceasing to be one.
    """

    def __init__(
        self,
        lock: LeaderLock,
        *,
        interval: float = POLL_INTERVAL,
        on_change: Callable[[bool], object] | None = None,
    ) -> None:
        self.lock = lock
        self.interval = interval
        self.on_change = on_change
        self.is_leader = False
        self._following_logged = False
        self._down_logged = False

    async def run(self, while_leader: Callable[[], Awaitable[object]]) -> None:
        """Until cancelled: lead when possible, running ``while_leader()`` as long as this service leads."""
        task: asyncio.Task[object] | None = None
        try:
            while True:
                if not self.is_leader and await self._try_lead():
                    task = asyncio.ensure_future(while_leader())
                elif self.is_leader and not await self.lock.still_held():
                    log.warning("lost leadership (the leader lock's connection broke): stopping the loops")
                    await _cancel(task)
                    task = None
                    self._set(False)
                await asyncio.sleep(self.interval)
        finally:
            await _cancel(task)
            if self.is_leader:
                self._set(False)
            with contextlib.suppress(Exception):
                await self.lock.release()

    async def _try_lead(self) -> bool:
        try:
            acquired = await self.lock.try_acquire()
        except Exception as exc:  # noqa: BLE001 - the store is down: keep following, try again
            if not self._down_logged:  # once per outage, not every second
                log.warning("cannot try the leader lock (trying again every %gs): %s", self.interval, exc)
                self._down_logged = True
            return False
        self._down_logged = False
        if acquired:
            # Marked first: whoever reads the log line finds control.json saying so already.
            self._set(True)
            log.info("became leader: this service runs the autoscaler, the TTL reaper and heartbeat checks")
        elif not self._following_logged:
            log.info("following: another control service leads; taking over if it goes away")
            self._following_logged = True
        return acquired

    def _set(self, leader: bool) -> None:
        self.is_leader = leader
        self._following_logged = False
        if self.on_change is not None:
            try:
                self.on_change(leader)
            except Exception:
                log.exception("reporting the change of leadership failed")


async def _cancel(task: asyncio.Task[object] | None) -> None:
    if task is None:
        return
    task.cancel()
    # wait(), not await: the loops' cancellation must not be taken for this task's own.
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved (a gather ends with CancelledError as its exception): nothing to report


def on_this_host(owner: str) -> bool:
    """Whether a worker's owner (so the worker, for local processes) runs on this host; unknown owners count."""
    return not owner or owner.partition(":")[0] == socket.gethostname()


def orphan_loss(worker: WorkerRow, now: float, heartbeat_timeout: float, *, me: str, local: bool = True) -> str | None:
    """Why a worker of a shared store is lost although its heartbeats alone would not say so yet; None if not.

    Its owner on this host is gone and its process with it (or never started: the owner died
    between recording and starting it), for a worker that is a process of this host
    (``local``: its pid is one here); or it never registered in ``6 × heartbeat_timeout``
    (at least a minute), wherever it runs.
    """
    if local and worker.owner != me and owner_is_gone(worker.owner, me=me) and not pid_alive(worker.pid):
        return f"the control service that started it ({worker.owner or 'unknown'}) and the worker are gone"
    waited = now - worker.created_at
    if worker.last_heartbeat <= 0 and waited > max(60.0, 6 * heartbeat_timeout):
        return f"it never registered in {waited:.0f}s: its control service or its process went away"
    return None
