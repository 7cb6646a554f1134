"""A deployment's search filters as a cluster placement: Ray resources, eligible nodes, and why none is eligible.

Amounts (``gpus``, ``cpus``, ``ram_gb``) become Ray resources, so Ray's own accounting
gives each worker exactly what it asked for and queues it while the nodes are busy.
Properties of a node (``gpu_name``, ``gpu_ram_gb``, ``labels``) are matched here against
the nodes the cluster reports, and the worker is restricted to the matching nodes through
a label selector on their node ids. Before a worker is placed, ``unmet`` checks that some
node could ever hold it, so a filter no node meets fails the deploy at once, named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vastrpc._errors import DeploymentError
from vastrpc.image import LABEL_PREFIX, REQUIREMENT_FILTERS

__all__ = ["GPU_RAM_LABEL", "NodeInfo", "Placement"]

# The label a node declares its GPUs' memory with (GB per GPU): ``ray start --labels vastrpc.io/gpu-ram-gb=80``.
GPU_RAM_LABEL = "vastrpc.io/gpu-ram-gb"
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


def _number(text: str) -> str:
    value = float(text)
    return str(int(value)) if value.is_integer() else f"{value:g}"


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


@dataclass(frozen=True)
class Placement:
    """Where a worker may run and what it holds there, from a revision's requirements.

    Attributes:
        requirements: The filters as stored in the revision (``Image.require``).
        cpus: CPU cores the worker holds (1 when not asked).
        gpus: GPUs the worker holds; 1 when only ``gpu_name`` or ``gpu_ram_gb`` is asked.
        ram_gb: GB of RAM the worker holds (None: not accounted).
        gpu_name: The GPU model its node must have.
        gpu_ram_gb: The least memory per GPU its node's GPUs must have.
        labels: Node labels its node must carry.
    """

    requirements: Mapping[str, str] = field(default_factory=dict)
    cpus: float = 1.0
    gpus: float = 0.0
    ram_gb: float | None = None
    gpu_name: str | None = None
    gpu_ram_gb: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_requirements(cls, requirements: Mapping[str, str]) -> Placement:
        """Read stored filters.

        Raises:
            DeploymentError: (step ``placement``) a filter this service does not know, or
                a value that is not a number where one is needed.
        """
        amounts: dict[str, float] = {}
        labels: dict[str, str] = {}
        gpu_name = None
        for key, value in requirements.items():
            if key.startswith(LABEL_PREFIX):
                labels[key.removeprefix(LABEL_PREFIX)] = value
            elif key == "gpu_name":
                gpu_name = value
            elif key in REQUIREMENT_FILTERS and key != "labels":
                try:
                    amounts[key] = float(value)
                except ValueError:
                    raise DeploymentError(f"the filter {key}={value!r} is not a number", step="placement") from None
            else:
                accepted = ", ".join(REQUIREMENT_FILTERS)
                raise DeploymentError(f"unknown search filter {key!r}; accepted: {accepted}", step="placement")
        gpu_ram = amounts.get("gpu_ram_gb")
        wants_gpu = gpu_name is not None or gpu_ram is not None
        return cls(
            requirements=dict(requirements),
            cpus=amounts.get("cpus", 1.0),
            gpus=amounts.get("gpus", 1.0 if wants_gpu else 0.0),
            ram_gb=amounts.get("ram_gb"),
            gpu_name=gpu_name,
            gpu_ram_gb=gpu_ram,
            labels=labels,
        )

    def describe(self) -> str:
        """The filters as the user wrote them, e.g. ``gpus=1, gpu_name=A100``."""
        parts = [
            f"{key}={_number(value) if key in REQUIREMENT_FILTERS and key != 'gpu_name' else value}"
            for key, value in sorted(self.requirements.items())
            if not key.startswith(LABEL_PREFIX)
        ]
        parts += [f"labels[{k}]={v}" for k, v in sorted(self.labels.items())]
        return ", ".join(parts) or "no filter"

    # -- per-node checks ------------------------------------------------------------------

    def _checks(self) -> list[tuple[str, Any, Any]]:
        """(filter as text, does a node meet it, what a node offers for it) for every filter asked."""
        checks: list[tuple[str, Any, Any]] = []
        if self.gpus:
            checks.append((f"gpus={_number(str(self.gpus))}", lambda n: n.amount("GPU") >= self.gpus, _gpus_offered))
        if self.gpu_name is not None:
            want = _norm(self.gpu_name)
            checks.append(
                (
                    f"gpu_name={self.gpu_name}",
                    lambda n: any(_norm(a) == want for a in n.accelerators),
                    lambda n: "/".join(n.accelerators) or "none",
                )
            )
        if self.gpu_ram_gb is not None:
            need = self.gpu_ram_gb
            checks.append(
                (
                    f"gpu_ram_gb={_number(str(need))}",
                    lambda n: n.gpu_ram_gb is not None and n.gpu_ram_gb >= need,
                    lambda n: "unknown" if n.gpu_ram_gb is None else _number(str(n.gpu_ram_gb)),
                )
            )
        checks.append(
            (
                f"cpus={_number(str(self.cpus))}",
                lambda n: n.amount("CPU") >= self.cpus,
                lambda n: _number(str(n.amount("CPU"))),
            )
        )
        if self.ram_gb is not None:
            need_bytes = self.ram_gb * _GB
            checks.append(
                (
                    f"ram_gb={_number(str(self.ram_gb))}",
                    lambda n: n.amount("memory") >= need_bytes,
                    lambda n: f"{n.amount('memory') / _GB:.1f}",
                )
            )
        for key, value in sorted(self.labels.items()):
            checks.append(
                (
                    f"labels[{key}]={value}",
                    lambda n, k=key, v=value: n.labels.get(k) == v,
                    lambda n, k=key: n.labels.get(k) or "none",
                )
            )
        return checks

    def _gpu_matches(self, node: NodeInfo) -> bool:
        """Whether the node's GPUs are the model and have the memory asked; amounts are Ray's to check."""
        if self.gpu_name is not None and not any(_norm(a) == _norm(self.gpu_name) for a in node.accelerators):
            return False
        return self.gpu_ram_gb is None or (node.gpu_ram_gb is not None and node.gpu_ram_gb >= self.gpu_ram_gb)

    def unmet(self, nodes: Iterable[NodeInfo]) -> str | None:
        """Why no node could ever hold such a worker (its totals, not what is free now); None when one could."""
        nodes = list(nodes)
        if not nodes:
            return "the Ray cluster has no live node: start one with `ray start`"
        checks = self._checks()
        if any(all(ok(n) for _, ok, _ in checks) for n in nodes):
            return None
        advice = "add a node that offers it (ray start --num-gpus/--resources/--labels) or change image().require(...)"
        for text, ok, offered in checks:
            if not any(ok(n) for n in nodes):
                offers = ", ".join(sorted({offered(n) for n in nodes}))  # each distinct offer once
                return f"no node in the Ray cluster has {text}: its {len(nodes)} node(s) offer {offers}; {advice}"
        summary = "; ".join(f"{n.address} {n.node_id[:8]}: " + ", ".join(o(n) for _, _, o in checks) for n in nodes)
        together = ", ".join(text for text, _, _ in checks)
        return f"no node in the Ray cluster meets {together} together (per node: {summary}); {advice}"

    def ray_options(self, nodes: Iterable[NodeInfo]) -> dict[str, Any]:
        """Options for ``ActorClass.options``: resources, SPREAD, and a label selector for node properties.

        Labels are selected by Ray itself (a node that joins later qualifies); the GPU model
        and memory, which Ray cannot compare, pin the worker to the nodes that have them now.
        """
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus, "scheduling_strategy": "SPREAD"}
        if self.ram_gb is not None:
            options["memory"] = int(self.ram_gb * _GB)
        selector = dict(self.labels)
        if self.gpu_name is not None or self.gpu_ram_gb is not None:
            eligible = sorted(n.node_id for n in nodes if self._gpu_matches(n))
            selector[NODE_ID_LABEL] = f"in({','.join(eligible)})"
        if selector:
            options["label_selector"] = selector
        return options


def _gpus_offered(node: NodeInfo) -> str:
    return _number(str(node.amount("GPU")))
