"""A deployment's requirements (queries) as a Ray placement: resources, eligible nodes, and why none is eligible.

The worker's share of a node — GPUs (``num_gpus``), CPU cores (``cpu_cores_effective``) and
RAM (``cpu_ram``) — becomes Ray resources: the least amounts the queries allow, so Ray's own
accounting gives each worker exactly that and queues it while the nodes are busy. Every
query is then decided by the shared evaluator (``requirements.py``) against each node's
inventory as that share of it; labels are left to Ray's label selector, and the other
node properties (GPU model and memory, ...) restrict the worker to the nodes that meet
them through a selector on their node ids. Before a worker is placed, ``unmet`` checks that
some node could ever hold it, so a query no node meets fails the deploy at once, named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vastrpc.control.providers.inventory import GpuInfo, Inventory
from vastrpc.control.providers.requirements import Status, applicable, describe, evaluate
from vastrpc.query import LABEL_PREFIX, Operator, Query

__all__ = ["GPU_RAM_LABEL", "NodeInfo", "Placement"]

# The label a node declares its GPUs' memory with (GB per GPU): ``ray start --labels vastrpc.io/gpu-ram-gb=80``.
GPU_RAM_LABEL = "vastrpc.io/gpu-ram-gb"
# Labels a node declares what Ray does not report with (``ray start --labels vastrpc.io/compute-cap=890``).
COMPUTE_CAP_LABEL = "vastrpc.io/compute-cap"
DRIVER_LABEL = "vastrpc.io/driver-version"
CUDA_LABEL = "vastrpc.io/cuda-version"
CPU_ARCH_LABEL = "vastrpc.io/cpu-arch"
DISK_LABEL = "vastrpc.io/disk-gb"
# Set by Ray on every node: how a worker is pinned to a set of nodes.
NODE_ID_LABEL = "ray.io/node-id"
# Set by Ray on nodes whose GPUs it recognises (a resource, and on recent versions also a label).
ACCELERATOR_RESOURCE = "accelerator_type:"
ACCELERATOR_LABEL = "ray.io/accelerator-type"
# GPU memory of accelerator types whose name says it (Ray's names); others need GPU_RAM_LABEL.
_KNOWN_GPU_RAM_GB = {
    "A100-40G": 40.0,
    "A100-80G": 80.0,
    "H100": 80.0,
    "H200": 141.0,
    "L4": 24.0,
    "L40S": 48.0,
    "A10G": 24.0,
    "T4": 16.0,
}
_GB = 10**9


def _norm(name: str) -> str:
    return "-".join(name.replace("_", " ").split()).upper()


@dataclass(frozen=True)
class NodeInfo:
    """What the cluster reports about one live node.

    Attributes:
        node_id: Ray's node id.
        address: The node's IP address.
        resources: Its total resources (``CPU``, ``GPU``, ``memory`` in bytes, custom ones).
        labels: Its labels.
    """

    node_id: str
    address: str
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_ray(cls, node: Mapping[str, Any]) -> NodeInfo:
        """From an entry of ``ray.nodes()``."""
        return cls(
            node_id=str(node.get("NodeID", "")),
            address=str(node.get("NodeManagerAddress", "")),
            resources={k: float(v) for k, v in (node.get("Resources") or {}).items()},
            labels={k: str(v) for k, v in (node.get("Labels") or {}).items()},
        )

    @property
    def accelerators(self) -> list[str]:
        """The GPU models the node offers, by Ray's names."""
        names = {k.removeprefix(ACCELERATOR_RESOURCE) for k in self.resources if k.startswith(ACCELERATOR_RESOURCE)}
        if self.labels.get(ACCELERATOR_LABEL):
            names.add(self.labels[ACCELERATOR_LABEL])
        return sorted(names)

    @property
    def gpu_ram_gb(self) -> float | None:
        """GB of memory per GPU: from the node's label, else known from its GPU model; None when unknown."""
        declared = self.labels.get(GPU_RAM_LABEL)
        if declared:
            try:
                return float(declared)
            except ValueError:
                return None
        known = [_KNOWN_GPU_RAM_GB[_norm(a)] for a in self.accelerators if _norm(a) in _KNOWN_GPU_RAM_GB]
        return min(known) if known else None

    def amount(self, resource: str) -> float:
        """The node's total of a resource (0 when it has none)."""
        return self.resources.get(resource, 0.0)

    def _label_number(self, name: str) -> float | None:
        try:
            return float(self.labels[name]) if self.labels.get(name) else None
        except ValueError:
            return None

    def inventory(self, gpus: float, cpus: float) -> Inventory:
        """The node as a worker holding ``gpus`` GPUs and ``cpus`` cores of it would see it.

        A node with fewer GPUs or cores than that offers what it has.
        """
        count = int(min(self.amount("GPU"), max(gpus, 0.0)) if gpus else 0)
        name = "/".join(self.accelerators)
        cap = self._label_number(COMPUTE_CAP_LABEL)
        gpu = GpuInfo(
            name=name,
            memory_gb=self.gpu_ram_gb,
            compute_cap=cap * 100 if cap is not None and cap < 100 else cap,
            driver_version=self.labels.get(DRIVER_LABEL) or None,
            cuda_version=self._label_number(CUDA_LABEL),
        )
        return Inventory(
            cpu_cores=self.amount("CPU"),
            cpu_cores_effective=min(self.amount("CPU"), cpus),
            ram_gb=self.amount("memory") / _GB,
            disk_gb=self._label_number(DISK_LABEL),
            cpu_arch=self.labels.get(CPU_ARCH_LABEL) or None,
            gpus=(gpu,) * count,
            labels=dict(self.labels),
        )


# The columns that size a worker's share of a node (Ray resources), not the node itself.
_SHARE = {"num_gpus", "cpu_cores_effective", "cpu_ram"}


def _least(queries: Sequence[Query], column: str, floor: float) -> float | None:
    """The least amount of ``column``, at least ``floor``, that every query on it allows; None when none asks."""
    own = [q for q in queries if q.column == column]
    if not own:
        return None
    candidates = {floor}
    for q in own:
        for v in q.values:
            assert isinstance(v, float)
            candidates |= {v, v + 1}
    for amount in sorted(c for c in candidates if c >= floor):
        if all(_allows(q, amount) for q in own):
            return amount
    return floor  # contradictory queries: the node check names them


def _allows(query: Query, amount: float) -> bool:
    values = [float(v) for v in query.values]  # type: ignore[arg-type]
    return {
        Operator.EQ: amount == values[0],
        Operator.NE: amount != values[0],
        Operator.LT: amount < values[0],
        Operator.LE: amount <= values[0],
        Operator.GT: amount > values[0],
        Operator.GE: amount >= values[0],
        Operator.IN: amount in values,
        Operator.NOT_IN: amount not in values,
    }[query.op]


@dataclass(frozen=True)
class Placement:
    """Where a worker may run and what it holds there, from a revision's requirements.

    Attributes:
        queries: The requirements (``Image.require``).
        cpus: CPU cores the worker holds: the least ``cpu_cores_effective`` allows, 1 when not asked.
        gpus: GPUs the worker holds: the least ``num_gpus`` allows; 1 when only GPU properties
            (``gpu_name``, ``gpu_ram``, ...) are asked, 0 when nothing about GPUs is.
        ram_gb: GB of RAM the worker holds: the least ``cpu_ram`` allows (None: not accounted).
    """

    queries: tuple[Query, ...] = ()
    cpus: float = 1.0
    gpus: float = 0.0
    ram_gb: float | None = None

    @classmethod
    def from_queries(cls, queries: Iterable[Query]) -> Placement:
        """The placement of a worker with these requirements."""
        queries = tuple(queries)
        gpu_property = any(
            q.column.startswith("gpu_") or q.column in ("compute_cap", "cuda_max_good", "driver_vers")
            for q in queries
            if applicable(q)
        )
        gpus = _least(queries, "num_gpus", 1.0 if gpu_property else 0.0)
        return cls(
            queries=queries,
            cpus=_least(queries, "cpu_cores_effective", 0.0) or 1.0,
            gpus=(1.0 if gpu_property else 0.0) if gpus is None else gpus,
            ram_gb=_least(queries, "cpu_ram", 0.0),
        )

    def describe(self) -> str:
        """The requirements as the user wrote them, e.g. ``num_gpus >= 1, gpu_name == "A100"``."""
        return describe(self.queries)

    @property
    def not_applicable(self) -> list[Query]:
        """The queries no node can be checked for (Vast's marketplace's columns)."""
        return [q for q in self.queries if not applicable(q)]

    def _checked(self) -> list[Query]:
        return [q for q in self.queries if applicable(q)]

    def _outcomes(self, node: NodeInfo, queries: Sequence[Query]) -> list[Any]:
        return list(evaluate(queries, node.inventory(self.gpus, self.cpus)).outcomes)

    def unmet(self, nodes: Iterable[NodeInfo]) -> str | None:
        """Why no node could ever hold such a worker (its totals, not what is free now); None when one could."""
        nodes = list(nodes)
        if not nodes:
            return "the Ray cluster has no live node: start one with `ray start`"
        checked = self._checked()
        per_node = {n.node_id: self._outcomes(n, checked) for n in nodes}
        if any(all(o.status is Status.MET for o in outcomes) for outcomes in per_node.values()):
            return None
        advice = "add a node that offers it (ray start --num-gpus/--resources/--labels) or change image().require(...)"
        for index, query in enumerate(checked):
            if not any(per_node[n.node_id][index].status is Status.MET for n in nodes):
                offers = ", ".join(sorted({per_node[n.node_id][index].offered for n in nodes}))
                return f"no node in the Ray cluster meets {query}: its {len(nodes)} node(s) offer {offers}; {advice}"
        summary = "; ".join(
            f"{n.address} {n.node_id[:8]}: " + ", ".join(o.offered for o in per_node[n.node_id]) for n in nodes
        )
        return f"no node in the Ray cluster meets {describe(checked)} together (per node: {summary}); {advice}"

    def ray_options(self, nodes: Iterable[NodeInfo]) -> dict[str, Any]:
        """Options for ``ActorClass.options``: resources, SPREAD, and a label selector for node properties.

        Labels are selected by Ray itself (a node that joins later qualifies); the other
        node properties, which Ray cannot compare, pin the worker to the nodes that have them now.
        """
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus, "scheduling_strategy": "SPREAD"}
        if self.ram_gb is not None:
            options["memory"] = int(self.ram_gb * _GB)
        selector: dict[str, str] = {}
        for q in self.queries:
            if q.column.startswith(LABEL_PREFIX):
                selector[q.column.removeprefix(LABEL_PREFIX)] = _label_selector(q)
        properties = [q for q in self._checked() if q.column not in _SHARE and not q.column.startswith(LABEL_PREFIX)]
        if properties:
            eligible = sorted(
                n.node_id for n in nodes if all(o.status is Status.MET for o in self._outcomes(n, properties))
            )
            selector[NODE_ID_LABEL] = f"in({','.join(eligible)})"
        if selector:
            options["label_selector"] = selector
        return options


def _label_selector(query: Query) -> str:
    """A label query in Ray's label selector syntax: ``value``, ``!value``, ``in(a,b)``, ``!in(a,b)``."""
    values = [str(v) for v in query.values]
    return {
        Operator.EQ: values[0],
        Operator.NE: f"!{values[0]}",
        Operator.IN: f"in({','.join(values)})",
        Operator.NOT_IN: f"!in({','.join(values)})",
    }[query.op]
