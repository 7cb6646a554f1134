"""Open sessions per worker, as clients report them: what the autoscaler counts as reserved capacity."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

__all__ = ["MAX_SESSION_TTL", "OpenSession", "SessionTable"]

# The longest a session may be held without a renewal (seconds).
MAX_SESSION_TTL = 24 * 3600.0


@dataclass(frozen=True)
class OpenSession:
    """One session a client holds on a worker.

    Attributes:
        endpoint_id: The endpoint the worker serves.
        worker_id: The worker the session's calls go to.
        expires_at: When it ends unless renewed (Unix seconds).
    """

    endpoint_id: str
    worker_id: str
    expires_at: float


class SessionTable:
    """The sessions clients hold open, in memory: clients renew theirs well before they expire.

    After a restart of the control service (or on a service that is not the leader, whose
    autoscaler does not run), the table fills again at each client's next renewal.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, OpenSession] = {}

    def hold(self, session_id: str, endpoint_id: str, worker_id: str, ttl: float, now: float | None = None) -> None:
        """Open or renew ``session_id`` on ``worker_id`` for ``ttl`` seconds from now; ``ttl <= 0`` releases it."""
        if ttl <= 0:
            self._sessions.pop(session_id, None)
            return
        now = time.time() if now is None else now
        self._sessions[session_id] = OpenSession(endpoint_id, worker_id, now + min(ttl, MAX_SESSION_TTL))

    def release(self, session_id: str) -> None:
        """Forget a session (closed by its client)."""
        self._sessions.pop(session_id, None)

    def per_worker(self, endpoint_id: str, now: float | None = None) -> Counter[str]:
        """Open sessions on each worker of the endpoint; expired ones are dropped on the way."""
        now = time.time() if now is None else now
        counts: Counter[str] = Counter()
        for session_id, session in list(self._sessions.items()):
            if session.expires_at <= now:
                del self._sessions[session_id]
            elif session.endpoint_id == endpoint_id:
                counts[session.worker_id] += 1
        return counts
