"""The one evaluator of requirements (queries) against an inventory, shared by every provider.

Each query is met, unmet (with what the inventory offers for its column), or not
applicable: a column of Vast's marketplace no provider here can know (prices, bandwidth,
reliability, host ids...), accepted and reported, never silently dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vastrpc._errors import DefinitionError
from vastrpc.api.v1 import control_pb2
from vastrpc.control.providers.inventory import GpuInfo, Inventory
from vastrpc.image import stored_keyword_queries
from vastrpc.query import COLUMNS, LABEL_PREFIX, Kind, Operator, Query, same_gpu

__all__ = [
    "APPLICABLE",
    "Evaluation",
    "Outcome",
    "Status",
    "evaluate",
    "spec_queries",
]

# Columns a provider can check against a host; node labels (``label:<key>``) too.
APPLICABLE = frozenset(
    {
        "gpu_name",
        "gpu_ram",
        "gpu_total_ram",
        "num_gpus",
        "compute_cap",
        "cuda_max_good",
        "driver_vers",
        "gpu_arch",
        "cpu_name",
        "cpu_cores",
        "cpu_cores_effective",
        "cpu_ram",
        "cpu_arch",
        "disk_space",
    }
)
_PER_GPU = {"gpu_name", "gpu_ram", "compute_cap", "cuda_max_good", "driver_vers", "gpu_arch"}
_CPU_ARCH = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}


class Status(enum.Enum):
    """What a query's evaluation found."""

    MET = "met"
    UNMET = "unmet"
    NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class Outcome:
    """One query against one inventory.

    Attributes:
        query: The query.
        status: Met, unmet, or not applicable.
        offered: What the inventory offers for the query's column, in words (``"0 GPUs"``,
            ``"RTX 4090"``, ``"unknown"``); empty when not applicable.
    """

    query: Query
    status: Status
    offered: str

    def reason(self, where: str = "this machine") -> str:
        """The query and what ``where`` offers, e.g. ``gpu_ram >= 48 (this machine: 0 GPUs)``."""
        if self.status is Status.NOT_APPLICABLE:
            return f"{self.query} (not applicable here: {self.query.column} is Vast's marketplace's to know)"
        return f"{self.query} ({where}: {self.offered})"


@dataclass(frozen=True)
class Evaluation:
    """Every query's outcome against one inventory.

    Attributes:
        outcomes: One per query, in the queries' order.
    """

    outcomes: tuple[Outcome, ...]

    @property
    def met(self) -> bool:
        """Whether no applicable query is unmet."""
        return not self.unmet

    @property
    def unmet(self) -> list[Outcome]:
        """The queries the inventory does not meet."""
        return [o for o in self.outcomes if o.status is Status.UNMET]

    @property
    def not_applicable(self) -> list[Outcome]:
        """The queries no provider here can check."""
        return [o for o in self.outcomes if o.status is Status.NOT_APPLICABLE]


def applicable(query: Query) -> bool:
    """Whether a provider can check ``query`` against a host."""
    return query.column in APPLICABLE or query.column.startswith(LABEL_PREFIX)


def evaluate(queries: Iterable[Query], inventory: Inventory) -> Evaluation:
    """Decide each query against ``inventory``.

    A per-GPU column (``gpu_name``, ``gpu_ram``, ``compute_cap``, ...) holds when every GPU
    meets it, and never on a host without GPUs; an unknown value (None in the inventory)
    leaves the query unmet, saying so.
    """
    return Evaluation(tuple(_outcome(q, inventory) for q in queries))


def _outcome(query: Query, inventory: Inventory) -> Outcome:
    if not applicable(query):
        return Outcome(query, Status.NOT_APPLICABLE, "")
    observed, offered = _observe(query.column, inventory)
    if observed is None:
        return Outcome(query, Status.UNMET, offered)
    kind = Kind.TEXT if query.column.startswith(LABEL_PREFIX) else COLUMNS[query.column].kind
    ok = bool(observed) and all(_holds(query, kind, value) for value in observed)
    return Outcome(query, Status.MET if ok else Status.UNMET, offered)


def _number(value: float) -> str:
    return f"{value:.6g}"


def _observe(column: str, inv: Inventory) -> tuple[list[object] | None, str]:
    """The values of ``column`` the query must hold for, and what they are in words; None: unknown."""
    if column.startswith(LABEL_PREFIX):
        value = inv.labels.get(column.removeprefix(LABEL_PREFIX))
        return [value], value or "none"
    gpus = inv.gpus
    if column == "num_gpus":
        return [float(len(gpus))], f"{len(gpus)} GPU{'' if len(gpus) == 1 else 's'}"
    if column in _PER_GPU or column == "gpu_total_ram":
        if not gpus:
            return [], "0 GPUs"
        per_gpu = [_gpu_value(column, g) for g in gpus]
        if any(v is None for v in per_gpu):
            return None, f"{column} unknown"
        if column == "gpu_total_ram":
            total = float(sum(v for v in per_gpu if isinstance(v, (int, float))))
            return [total], _number(total)
        shown = sorted({_number(v) if isinstance(v, float) else str(v) for v in per_gpu})
        return list(per_gpu), "/".join(shown)
    machine: object = {
        "cpu_cores": inv.cpu_cores,
        "cpu_cores_effective": inv.cpu_cores_effective,
        "cpu_ram": inv.ram_gb,
        "disk_space": inv.disk_gb,
        "cpu_arch": inv.cpu_arch,
        "cpu_name": inv.cpu_name,
    }[column]
    if machine is None:
        return None, f"{column} unknown"
    return [machine], _number(machine) if isinstance(machine, float) else str(machine)


def _gpu_value(column: str, gpu: GpuInfo) -> object:
    if column == "gpu_name":
        return gpu.name or None
    if column == "gpu_arch":
        return "amd" if any(w in gpu.name.lower() for w in ("amd", "radeon", "instinct")) else "nvidia"
    return {
        "gpu_ram": gpu.memory_gb,
        "gpu_total_ram": gpu.memory_gb,
        "compute_cap": gpu.compute_cap,
        "cuda_max_good": gpu.cuda_version,
        "driver_vers": gpu.driver_version,
    }[column]


def _version(text: object) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".") if p.isdigit())


def _equal(column: str, kind: Kind, have: object, want: object) -> bool:
    if have is None:
        return False
    if column == "gpu_name":
        return same_gpu(str(want), str(have))
    if kind is Kind.NUMBER:
        return float(have) == float(want)  # type: ignore[arg-type]
    if kind is Kind.VERSION:
        want_v = _version(want)
        return _version(have)[: len(want_v)] == want_v  # "535" is every 535.x
    if kind is Kind.BOOL:
        return bool(have) is bool(want)
    if column == "cpu_arch":
        return _CPU_ARCH.get(str(have).lower(), str(have).lower()) == _CPU_ARCH.get(
            str(want).lower(), str(want).lower()
        )
    return str(have).casefold() == str(want).casefold()


def _holds(query: Query, kind: Kind, have: object) -> bool:
    op, column = query.op, query.column
    if op is Operator.EQ or op is Operator.IN:
        return any(_equal(column, kind, have, w) for w in query.values)
    if op is Operator.NE or op is Operator.NOT_IN:
        return not any(_equal(column, kind, have, w) for w in query.values)
    if have is None:
        return False
    want = query.values[0]
    a, b = (_version(have), _version(want)) if kind is Kind.VERSION else (float(have), float(want))  # type: ignore[arg-type]
    return {Operator.LT: a < b, Operator.LE: a <= b, Operator.GT: a > b, Operator.GE: a >= b}[op]  # type: ignore[operator]


def spec_queries(image: control_pb2.ImageSpec) -> list[Query]:
    """A stored image's requirements as queries: its ``queries``, else its old ``requirements`` map.

    Raises:
        DefinitionError: A requirement with an unknown column, operator or value.
    """
    if image.queries:
        return [_from_message(r) for r in image.queries]
    return stored_keyword_queries(dict(image.requirements))


def _from_message(requirement: control_pb2.Requirement) -> Query:
    try:
        name = control_pb2.RequirementOperator.Name(requirement.op).removeprefix("REQUIREMENT_OPERATOR_")
    except ValueError:
        name = ""
    if name not in Operator.__members__:
        raise DefinitionError(
            f"requirement on {requirement.column!r} has no operator: set op (REQUIREMENT_OPERATOR_EQ, ...)"
        )
    return Query.from_texts(requirement.column, Operator[name], requirement.values)


def describe(queries: Sequence[Query]) -> str:
    """The queries as written, joined: ``num_gpus >= 1, gpu_name == "A100"``."""
    return ", ".join(str(q) for q in queries) or "no requirement"
