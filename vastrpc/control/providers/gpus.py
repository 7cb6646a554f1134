"""Which of a host's GPUs each worker holds (``GpuSlots``), shared by every provider that runs workers on one host.

How many GPUs a worker gets comes from its ``num_gpus`` queries: ``num_gpus == N``, ``>= N``
and ``.in_([...])`` give the smallest count they allow that is at least one (``== 0`` gives
none). Without a ``num_gpus`` query a worker gets one GPU when it asks for a kind of GPU
(``gpu_name``, ``gpu_ram``, ``compute_cap``, ...), else none. Its GPUs are the free ones
that meet every per-GPU query, lowest index first, the ones it last held preferred (a
worker restarted in its slot gets the same GPUs back).

When the host's GPUs could meet the queries but too few are free (other workers hold them),
``take`` raises ``GpuPlacementError`` (a DeploymentError at step ``placement``) naming the
query and the workers holding the GPUs. When the host could never meet them (too few GPUs,
or none of the asked kind), the worker gets as many free GPUs as it asks for, of any kind
(issue 13: the local machine runs a worker despite unmet requirements, and says so); on a
host without GPUs it gets none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from vastrpc._errors import DeploymentError
from vastrpc.control.providers.inventory import GpuInfo, Inventory
from vastrpc.control.providers.requirements import evaluate
from vastrpc.query import Operator, Query

__all__ = ["PER_GPU_COLUMNS", "GpuPlacementError", "GpuSlots", "gpu_count", "visible_devices"]

# Columns that say what kind of GPU a worker needs; each GPU it gets must meet them.
PER_GPU_COLUMNS = frozenset({"gpu_name", "gpu_ram", "compute_cap", "cuda_max_good", "driver_vers", "gpu_arch"})
# More GPUs than any host has: the search for a count num_gpus queries allow stops here.
_MAX_GPUS = 1024


class GpuPlacementError(DeploymentError):
    """Not enough free GPUs on the host meet a worker's queries: other workers hold them."""

    def __init__(self, message: str) -> None:
        super().__init__(message, step="placement")


def gpu_count(queries: Iterable[Query]) -> int:
    """How many GPUs a worker with ``queries`` gets.

    The smallest count of at least one that every ``num_gpus`` query allows (``== N`` and
    ``>= N`` give N, ``.in_([...])`` the smallest value); 0 when only 0 is allowed. Without
    a ``num_gpus`` query: 1 when a per-GPU query asks for a kind of GPU, else 0.

    Raises:
        GpuPlacementError: The ``num_gpus`` queries allow no count at all (``num_gpus > 4``
            with ``num_gpus < 2``).
    """
    queries = list(queries)
    counts = [q for q in queries if q.column == "num_gpus"]
    if not counts:
        return 1 if any(q.column in PER_GPU_COLUMNS for q in queries) else 0
    upper = max([_MAX_GPUS, *(math.ceil(float(v)) + 1 for q in counts for v in q.values)])  # type: ignore[arg-type]
    for n in [*range(1, upper + 1), 0]:
        if all(_allows(q, n) for q in counts):
            return n
    raise GpuPlacementError(
        f"no number of GPUs meets {', '.join(str(q) for q in counts)}: give num_gpus queries that allow a count"
    )


def _allows(query: Query, n: int) -> bool:
    values = [float(v) for v in query.values]  # type: ignore[arg-type]
    return {
        Operator.EQ: n == values[0],
        Operator.NE: n != values[0],
        Operator.IN: n in values,
        Operator.NOT_IN: n not in values,
        Operator.LT: n < values[0],
        Operator.LE: n <= values[0],
        Operator.GT: n > values[0],
        Operator.GE: n >= values[0],
    }[query.op]


def visible_devices(indices: Sequence[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a worker holding ``indices``: ``"0,1"``; ``""`` (no GPU) when none."""
    return ",".join(str(i) for i in indices)


class GpuSlots:
    """Which of a host's GPUs each worker holds; one GPU is never held by two workers.

    Args:
        gpus: The host's GPUs, in index order (``CUDA_VISIBLE_DEVICES`` numbers them so).
    """

    def __init__(self, gpus: Sequence[GpuInfo]) -> None:
        self._gpus = tuple(gpus)
        self._holder: dict[int, str] = {}  # GPU index -> the worker holding it
        self._last: dict[str, tuple[int, ...]] = {}  # worker -> the GPUs it last held (preferred again)

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        """The host's GPUs."""
        return self._gpus

    def take(self, worker_id: str, queries: Sequence[Query]) -> tuple[int, ...]:
        """The GPU indices ``worker_id`` holds from now on, for its ``queries`` (see the module's docstring).

        A worker that already holds GPUs keeps them (the same tuple again).

        Raises:
            GpuPlacementError: The host's GPUs could meet ``queries`` but not enough are
                free; the message names the query and the workers holding the GPUs.
        """
        if held := self.held(worker_id):
            return held
        need = gpu_count(queries)
        if need == 0 or not self._gpus:
            return ()
        per_gpu = [q for q in queries if q.column in PER_GPU_COLUMNS]
        matching = [i for i, gpu in enumerate(self._gpus) if evaluate(per_gpu, Inventory(gpus=(gpu,))).met]
        if len(matching) < need:
            # The host can never meet the queries: run anyway on whatever GPUs it has (warned elsewhere).
            matching = list(range(len(self._gpus)))
            need = min(need, len(matching))
        free = [i for i in matching if i not in self._holder]
        if len(free) < need:
            raise GpuPlacementError(self._shortage(worker_id, queries, need, matching, free))
        preferred = [i for i in self._last.get(worker_id, ()) if i in free]
        chosen = tuple(sorted((preferred + [i for i in free if i not in preferred])[:need]))
        for index in chosen:
            self._holder[index] = worker_id
        self._last[worker_id] = chosen
        return chosen

    def adopt(self, worker_id: str, indices: Iterable[int]) -> tuple[int, ...]:
        """Record that ``worker_id`` holds ``indices`` already (a worker of an earlier control service).

        Indices this host does not have, or another worker holds, are skipped; returns the ones recorded.
        """
        kept = tuple(i for i in sorted(set(indices)) if 0 <= i < len(self._gpus) and i not in self._holder)
        for index in kept:
            self._holder[index] = worker_id
        if kept:
            self._last[worker_id] = kept
        return kept

    def give_back(self, worker_id: str) -> None:
        """Free the worker's GPUs (it stopped or exited); nothing when it holds none."""
        for index in self.held(worker_id):
            del self._holder[index]

    def forget(self, worker_id: str) -> None:
        """Free the worker's GPUs and forget which it held (it will not be restarted)."""
        self.give_back(worker_id)
        self._last.pop(worker_id, None)

    def held(self, worker_id: str) -> tuple[int, ...]:
        """The GPU indices ``worker_id`` holds, in order; empty when none."""
        return tuple(sorted(i for i, holder in self._holder.items() if holder == worker_id))

    def holders(self) -> dict[str, tuple[int, ...]]:
        """Every worker holding GPUs, with its GPU indices."""
        return {w: self.held(w) for w in sorted(set(self._holder.values()))}

    def _shortage(
        self, worker_id: str, queries: Sequence[Query], need: int, matching: list[int], free: list[int]
    ) -> str:
        asked = ", ".join(str(q) for q in queries if q.column == "num_gpus" or q.column in PER_GPU_COLUMNS)
        asked = asked or f"num_gpus == {need}"
        held = "; ".join(
            f"GPU{'s' if len(ix) > 1 else ''} {', '.join(map(str, ix))} held by worker {w}"
            for w, ix in self.holders().items()
            if set(ix) & set(matching)
        )
        return (
            f"worker {worker_id} needs {need} GPU{'s' if need > 1 else ''} ({asked}) but only {len(free)} of the "
            f"{len(matching)} GPUs of this host that meet it {'is' if len(free) == 1 else 'are'} free ({held}): "
            "stop or scale down the workers holding them, or ask for fewer GPUs"
        )
