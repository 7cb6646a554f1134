"""The workers of a single-service store that are not stopped, kept in memory beside the file."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vastrpc.control.stores.base import WorkerRow

__all__ = ["LiveWorkers"]


def _with_values(row: WorkerRow, values: dict[str, Any]) -> WorkerRow:
    """A copy of the frozen row with some fields changed (without ``dataclasses.replace``'s ``__init__``)."""
    made = object.__new__(WorkerRow)
    made.__dict__.update(row.__dict__)
    made.__dict__.update(values)
    return made


class LiveWorkers:
    """Every worker not stopped, by id and by token hash, written through by the store.

    A control service of a thousand workers reads them several times a second (the
    autoscaler's look, the heartbeat check, every endpoint snapshot its watches share), and
    reading a thousand rows from SQLite costs 5–30 ms each time; filtering them here costs a
    few hundred microseconds. Only a store that one process uses may keep it: every write
    goes through that process's store, which puts the new row here after writing it (or
    drops it when stopped), and forgets everything when a transaction rolls back
    (``invalidate``: the next read loads the rows again). Stopped workers, which only
    accumulate, stay in the file alone.

    Heartbeats (a thousand a second) are taken here at once and written to the file a few
    seconds later (``unwritten``), in one batch: the file only needs them to judge silence
    after a restart, and the heartbeat timeout is at least 10 s. Rows loaded again get the
    beats not written yet.

    Args:
        load: Reads every worker not stopped from the file.
        enabled: False for a store that is not the file's only user (one reading beside a
            running service): nothing is kept, every beat is written at once.
    """

    def __init__(self, load: Callable[[], Iterable[WorkerRow]], enabled: bool = True) -> None:
        self._load = load
        self.enabled = enabled
        self._by_id: dict[str, WorkerRow] | None = None
        self._by_token: dict[str, str] = {}
        # Beats taken and not yet in the file, by worker: the latest of each.
        self.unwritten: dict[str, dict[str, Any]] = {}

    def _rows(self) -> dict[str, WorkerRow]:
        if not self.enabled:
            return {}
        if self._by_id is None:
            rows = list(self._load())
            self._by_id = {w.id: w for w in rows}
            self._by_token = {w.token_hash: w.id for w in rows}
            self._apply(self.unwritten)
        return self._by_id

    def invalidate(self) -> None:
        """Forget every row: the next read loads them from the file again."""
        self._by_id = None
        self._by_token = {}

    def get(self, worker_id: str) -> WorkerRow | None:
        """The worker if it is not stopped; None when stopped or unknown (the file may know it)."""
        return self._rows().get(worker_id)

    def by_token(self, token_hash: str) -> WorkerRow | None:
        """The worker not stopped whose token hashes to ``token_hash``; None otherwise."""
        rows = self._rows()  # loads the token index too
        worker_id = self._by_token.get(token_hash)
        return rows.get(worker_id) if worker_id is not None else None

    def put(self, row: WorkerRow) -> None:
        """The worker's row as just written (dropped when it is stopped)."""
        if not self.enabled:
            return
        rows = self._rows()
        old = rows.pop(row.id, None)
        if old is not None:
            self._by_token.pop(old.token_hash, None)
        if row.state != "stopped":
            rows[row.id] = row
            self._by_token[row.token_hash] = row.id

    def beat(self, beats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Take heartbeats (``record_heartbeats``) to be written later; returns those of workers not kept here.

        The newest beat time wins, as in the file.
        """
        rows = self._rows()
        others = {worker_id: beat for worker_id, beat in beats.items() if worker_id not in rows}
        if others:
            beats = {worker_id: beat for worker_id, beat in beats.items() if worker_id in rows}
        self._apply(beats)
        for worker_id, beat in beats.items():
            earlier = self.unwritten.get(worker_id)
            if earlier is not None and earlier["last_heartbeat"] > beat["last_heartbeat"]:
                beat = {**beat, "last_heartbeat": earlier["last_heartbeat"]}
            self.unwritten[worker_id] = beat
        return others

    def _apply(self, beats: dict[str, dict[str, Any]]) -> None:
        rows = self._by_id or {}
        for worker_id, beat in beats.items():
            row = rows.get(worker_id)
            if row is not None:
                values = {k: beat[k] for k in ("calls_in_flight", "calls_queued", "calls_started")}
                values["last_heartbeat"] = max(row.last_heartbeat, beat["last_heartbeat"])
                rows[worker_id] = _with_values(row, values)

    def answers(self, states: Sequence[str] | None, exclude_states: Sequence[str] | None) -> bool:
        """Whether a listing with these filters is answered here: it can only hold workers not stopped."""
        only_live = (states is not None and "stopped" not in states) or "stopped" in (exclude_states or ())
        return self.enabled and only_live

    def select(
        self,
        *,
        endpoint_id: str | None,
        revision_id: str | None,
        states: Sequence[str] | None,
        exclude_states: Sequence[str] | None,
    ) -> list[WorkerRow]:
        """Workers matching every given filter, oldest first (as the file's ``ORDER BY created_at, id``)."""
        wanted = set(states) if states is not None else None
        unwanted = set(exclude_states or ())
        found = [
            w
            for w in self._rows().values()
            if (endpoint_id is None or w.endpoint_id == endpoint_id)
            and (revision_id is None or w.revision_id == revision_id)
            and (wanted is None or w.state in wanted)
            and w.state not in unwanted
        ]
        found.sort(key=lambda w: (w.created_at, w.id))
        return found
